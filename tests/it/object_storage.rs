//! One object storage suite, run against both backends: the local directory and a real
//! S3-compatible server (moto, started by the suite; see `s3.rs`).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sonicgw::blobs::{BlobStore, StorageLocation, PART_SIZE};

use crate::s3::Bucket;

/// A store and what keeps its backing alive.
struct Backing {
    store: BlobStore,
    _dir: tempfile::TempDir,
    bucket: Option<Bucket>,
}

async fn local() -> Backing {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path().join("blobs")).unwrap();
    Backing {
        store,
        _dir: dir,
        bucket: None,
    }
}

async fn s3_with_prefix(bucket: Bucket, prefix: &str) -> Backing {
    let location = StorageLocation::parse(&bucket.url(prefix), "/unused".into()).unwrap();
    let store = BlobStore::open(&location, &bucket.options()).unwrap();
    Backing {
        store,
        _dir: tempfile::tempdir().unwrap(),
        bucket: Some(bucket),
    }
}

async fn s3() -> Backing {
    s3_with_prefix(Bucket::create().await, "gw/prod").await
}

/// Bytes that differ at every offset, so a misplaced range shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn collect(store: &BlobStore, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let read = store
        .read(key, range)
        .await
        .unwrap()
        .expect("object exists");
    let mut out = Vec::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn small_and_multipart_objects_round_trip(backing: Backing) {
    let store = &backing.store;
    let scratch = tempfile::tempdir().unwrap();
    let small = pattern(10_000);
    // Past one part: a multipart upload of three parts, the last short.
    let large = pattern(2 * PART_SIZE + 12_345);
    let small_path = write(scratch.path(), "small.bin", &small);
    let large_path = write(scratch.path(), "large.bin", &large);
    assert_eq!(
        store
            .put_file("jobs/t/j/image.png", &small_path)
            .await
            .unwrap(),
        small.len() as u64
    );
    assert_eq!(
        store
            .put_file("jobs/t/j/video.mp4", &large_path)
            .await
            .unwrap(),
        large.len() as u64
    );
    assert!(small_path.exists() && large_path.exists(), "sources stay");

    let meta = store.head("jobs/t/j/video.mp4").await.unwrap().unwrap();
    assert_eq!(meta.size, large.len() as u64);
    assert_eq!(collect(store, "jobs/t/j/image.png", None).await, small);
    assert_eq!(collect(store, "jobs/t/j/video.mp4", None).await, large);
    // A range across a part boundary.
    let start = PART_SIZE as u64 - 100;
    let read = store
        .read("jobs/t/j/video.mp4", Some(start..start + 300))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (read.size, read.range.clone()),
        (large.len() as u64, start..start + 300)
    );
    assert_eq!(
        collect(store, "jobs/t/j/video.mp4", Some(start..start + 300)).await,
        large[start as usize..start as usize + 300]
    );

    let copy = scratch.path().join("copy.bin");
    store.fetch_to("jobs/t/j/video.mp4", &copy).await.unwrap();
    assert_eq!(std::fs::read(&copy).unwrap(), large);
}

async fn absent_objects_are_none_and_deleting_them_is_fine(backing: Backing) {
    let store = &backing.store;
    assert!(store.head("jobs/t/j/none.png").await.unwrap().is_none());
    assert!(store
        .read("jobs/t/j/none.png", None)
        .await
        .unwrap()
        .is_none());
    store.delete("jobs/t/j/none.png").await.unwrap();
    store.delete_prefix("jobs/t/nothing").await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    assert!(store
        .fetch_to("jobs/t/j/none.png", &scratch.path().join("x"))
        .await
        .is_err());
}

async fn deleting_a_prefix_removes_only_that_folder(backing: Backing) {
    let store = &backing.store;
    let scratch = tempfile::tempdir().unwrap();
    let source = write(scratch.path(), "f", b"bytes");
    for key in [
        "jobs/t/job1/image.png",
        "jobs/t/job1/video.mp4",
        "jobs/t/job10/image.png",
        "jobs/t/job2/image.png",
    ] {
        store.put_file(key, &source).await.unwrap();
    }
    store.delete_prefix("jobs/t/job1").await.unwrap();
    let mut keys: Vec<String> = store
        .list("jobs")
        .unwrap()
        .map(|entry| entry.unwrap().key)
        .collect()
        .await;
    keys.sort();
    assert_eq!(keys, ["jobs/t/job10/image.png", "jobs/t/job2/image.png"]);
    store.delete("jobs/t/job2/image.png").await.unwrap();
    assert!(store.head("jobs/t/job2/image.png").await.unwrap().is_none());
}

async fn keys_outside_the_gateways_shape_are_refused(backing: Backing) {
    let store = &backing.store;
    let scratch = tempfile::tempdir().unwrap();
    let source = write(scratch.path(), "f", b"x");
    for key in [
        "../escape",
        "jobs/../../x",
        "/abs",
        "a//b",
        "a/./b",
        "",
        "a b",
    ] {
        assert!(store.put_file(key, &source).await.is_err(), "{key:?}");
        assert!(store.head(key).await.is_err(), "{key:?}");
        assert!(store.delete_prefix(key).await.is_err(), "{key:?}");
    }
}

async fn listed_entries_carry_size_and_age(backing: Backing) {
    let store = &backing.store;
    let scratch = tempfile::tempdir().unwrap();
    let source = write(scratch.path(), "f", &pattern(777));
    let before = sonicgw::time::now_ms().saturating_sub_duration(Duration::from_secs(5));
    store.put_file("jobs/a/b/audio.wav", &source).await.unwrap();
    let entries: Vec<_> = store
        .list("jobs")
        .unwrap()
        .map(|entry| entry.unwrap())
        .collect()
        .await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].key, "jobs/a/b/audio.wav");
    assert_eq!(entries[0].size, 777);
    assert!(entries[0].last_modified >= before);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local_backend {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::local().await).await;
            })*
        }
        mod s3_backend {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::s3().await).await;
            })*
        }
    };
}

on_both_backends!(
    small_and_multipart_objects_round_trip,
    absent_objects_are_none_and_deleting_them_is_fine,
    deleting_a_prefix_removes_only_that_folder,
    keys_outside_the_gateways_shape_are_refused,
    listed_entries_carry_size_and_age,
);

#[tokio::test]
async fn s3_prefixes_keep_stores_in_one_bucket_apart() {
    let bucket = Bucket::create().await;
    let name = bucket.name.clone();
    let endpoint = bucket.endpoint.clone();
    let a = s3_with_prefix(bucket, "tenant-a/blobs").await;
    let b = s3_with_prefix(Bucket { name, endpoint }, "tenant-b").await;
    let scratch = tempfile::tempdir().unwrap();
    let source = write(scratch.path(), "f", b"a's");
    a.store
        .put_file("jobs/t/j/video.mp4", &source)
        .await
        .unwrap();
    assert!(b.store.head("jobs/t/j/video.mp4").await.unwrap().is_none());
    assert_eq!(b.store.list("jobs").unwrap().count().await, 0);
    b.store.delete_prefix("jobs").await.unwrap();
    assert_eq!(
        a.bucket.as_ref().unwrap().keys().await,
        ["tenant-a/blobs/jobs/t/j/video.mp4"],
        "stored under the prefix, untouched by the other store"
    );
}

#[tokio::test]
async fn s3_objects_carry_their_media_type_and_presign_for_the_bucket() {
    let backing = s3().await;
    let scratch = tempfile::tempdir().unwrap();
    let bytes = pattern(4096);
    let source = write(scratch.path(), "f", &bytes);
    backing
        .store
        .put_file("jobs/t/j/video.mp4", &source)
        .await
        .unwrap();
    let url = backing
        .store
        .presigned_get("jobs/t/j/video.mp4", Duration::from_secs(600))
        .await
        .unwrap();
    let bucket = backing.bucket.as_ref().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/{}/gw/prod/jobs/t/j/video.mp4?",
            bucket.endpoint, bucket.name
        )),
        "{url}"
    );
    assert!(url.contains("X-Amz-Expires=600"), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[..]);
}

#[tokio::test]
async fn local_storage_cannot_presign() {
    let backing = local().await;
    assert!(!backing.store.can_presign());
    assert!(backing
        .store
        .presigned_get("jobs/t/j/video.mp4", Duration::from_secs(60))
        .await
        .is_err());
}

//! Object storage for uploads and results, over the `object_store` crate: a local directory
//! (`file://<dir>`, the embedded default) or an S3-compatible bucket (`s3://bucket/prefix`). Nothing
//! outside this module sees a path on disk: objects are written from and copied to local scratch files,
//! or streamed.

pub mod location;

use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutPayload, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use location::StorageLocation;

use crate::time::UnixMillis;

/// Objects up to this size are written with one request; larger ones as a multipart upload of parts
/// this size (S3 needs at least 5 MiB per part but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once: with `PART_SIZE`, a writer holds at most about
/// three parts in memory, whatever the object's size.
const PARTS_IN_FLIGHT: usize = 2;
/// Mode of local blob folders: owner only.
const DIR_MODE: u32 = 0o700;

/// What a stored object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
    pub last_modified: UnixMillis,
}

/// An object listed under a prefix; `key` is relative to the store's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    pub key: String,
    pub size: u64,
    pub last_modified: UnixMillis,
    /// Where the backend keeps it: a listed object is removed by this, whatever its name.
    location: ObjectPath,
}

/// A streamed read of an object, whole or a byte range.
pub struct BlobRead {
    /// The whole object's size.
    pub size: u64,
    /// The bytes this stream carries.
    pub range: Range<u64>,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Which kind of backend holds the objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    S3,
}

/// Where job files live, by key (`jobs/<tenant>/<job>/<name>`).
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Presigns GET URLs (S3 only).
    signer: Option<Arc<dyn Signer>>,
    /// Prepended to every key (`s3://bucket/<prefix>`).
    prefix: Option<ObjectPath>,
    kind: BackendKind,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl BlobStore {
    /// Opens the store at `location`. S3 takes its settings from the standard `AWS_*` environment
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`),
    /// with `options` (object_store's S3 keys, e.g. `endpoint`, `allow_http`) laid over it.
    pub fn open(
        location: &StorageLocation,
        options: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        match location {
            StorageLocation::Local(root) => Self::local(root.clone()),
            StorageLocation::S3 { bucket, prefix } => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in options {
                    let key: object_store::aws::AmazonS3ConfigKey = key
                        .parse()
                        .with_context(|| format!("storage_options: unknown S3 option {key:?}"))?;
                    builder = builder.with_config(key, value);
                }
                let s3: Arc<AmazonS3> = Arc::new(
                    builder
                        .build()
                        .context("configuring S3 storage (storage_url, AWS_* environment)")?,
                );
                Ok(Self {
                    inner: s3.clone(),
                    signer: Some(s3),
                    prefix: (!prefix.is_empty()).then(|| ObjectPath::from(prefix.as_str())),
                    kind: BackendKind::S3,
                })
            }
        }
    }

    /// Objects as files under `root`. The root is owner-only: it holds the users' uploads and
    /// results (an existing root, from an older version that made it 0755, is tightened, which also
    /// closes everything under it).
    pub fn local(root: PathBuf) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&root)
            .with_context(|| format!("creating {}", root.display()))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("making {} owner-only", root.display()))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .with_context(|| format!("opening {}", root.display()))?
            .with_automatic_cleanup(true);
        Ok(Self {
            inner: Arc::new(fs),
            signer: None,
            prefix: None,
            kind: BackendKind::Local,
        })
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Keys are generated by the gateway (ids and fixed names); anything else is refused, never
    /// resolved (no `..`, no empty or absolute segments).
    fn path(&self, key: &str) -> anyhow::Result<ObjectPath> {
        anyhow::ensure!(valid_key(key), "invalid blob key {key:?}");
        Ok(match &self.prefix {
            Some(prefix) => ObjectPath::from(format!("{prefix}/{key}")),
            None => ObjectPath::from(key),
        })
    }

    /// Streams the local file at `source` into the store under `key`: one request for a small file, a
    /// multipart upload of `PART_SIZE` parts otherwise, so memory stays flat in the file's size. The
    /// source is left in place. Returns the size stored.
    pub async fn put_file(&self, key: &str, source: &Path) -> anyhow::Result<u64> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(source)
            .await
            .with_context(|| format!("opening {} to store it", source.display()))?;
        let size = file.metadata().await?.len();
        if size <= PART_SIZE as u64 {
            let mut buffer = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buffer).await?;
            let options = object_store::PutOptions {
                attributes: self.attributes(key),
                ..Default::default()
            };
            self.inner
                .put_opts(&path, PutPayload::from(buffer), options)
                .await
                .with_context(|| format!("storing {key}"))?;
            return Ok(size);
        }
        let options = PutMultipartOptions {
            attributes: self.attributes(key),
            ..Default::default()
        };
        let upload = self
            .inner
            .put_multipart_opts(&path, options)
            .await
            .with_context(|| format!("starting the upload of {key}"))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let copied = async {
            let mut written = 0u64;
            loop {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                let mut chunk = bytes::BytesMut::with_capacity(1024 * 1024);
                let n = (&mut file).take(1024 * 1024).read_buf(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                writer.put(chunk.freeze());
            }
            anyhow::Ok(written)
        }
        .await;
        match copied {
            Ok(written) => {
                writer
                    .finish()
                    .await
                    .with_context(|| format!("finishing the upload of {key}"))?;
                Ok(written)
            }
            Err(err) => {
                // Parts already sent are dropped, not left to bill.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "aborting a failed upload failed");
                }
                Err(err.context(format!("uploading {key}")))
            }
        }
    }

    /// What S3 should answer with the object (so a presigned link plays in a browser). The local
    /// backend stores no attributes.
    fn attributes(&self, key: &str) -> Attributes {
        let mut attributes = Attributes::new();
        if self.kind == BackendKind::S3 {
            if let Some(content_type) = content_type(key) {
                attributes.insert(Attribute::ContentType, content_type.into());
            }
        }
        attributes
    }

    /// Copies the object into a local scratch file (engines read their inputs from local disk),
    /// streamed.
    pub async fn fetch_to(&self, key: &str, destination: &Path) -> anyhow::Result<()> {
        let read = self
            .read(key, None)
            .await?
            .with_context(|| format!("blob {key} is missing"))?;
        let mut file = tokio::fs::File::create(destination)
            .await
            .with_context(|| format!("creating {}", destination.display()))?;
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.with_context(|| format!("reading blob {key}"))?)
                .await?;
        }
        file.flush().await?;
        Ok(())
    }

    /// The object's size and age; `None` when absent.
    pub async fn head(&self, key: &str) -> anyhow::Result<Option<BlobMeta>> {
        match self.inner.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(BlobMeta {
                size: meta.size,
                last_modified: UnixMillis::from_millis(meta.last_modified.timestamp_millis()),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("looking up blob {key}"))),
        }
    }

    /// Streams the object, or the byte `range` of it; `None` when absent.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> anyhow::Result<Option<BlobRead>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        match self.inner.get_opts(&self.path(key)?, options).await {
            Ok(result) => Ok(Some(BlobRead {
                size: result.meta.size,
                range: result.range.clone(),
                stream: result.into_stream().map_err(std::io::Error::other).boxed(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("reading blob {key}"))),
        }
    }

    /// Whether `presigned_get` can make links (S3 only).
    pub fn can_presign(&self) -> bool {
        self.signer.is_some()
    }

    /// A URL that reads the object directly from the bucket for `ttl`, without our credentials.
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> anyhow::Result<String> {
        let signer = self
            .signer
            .as_ref()
            .context("presigned links need S3 storage")?;
        let url = signer
            .signed_url(reqwest::Method::GET, &self.path(key)?, ttl)
            .await
            .with_context(|| format!("presigning {key}"))?;
        Ok(url.to_string())
    }

    /// Removes one object; absent is fine.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        match self.inner.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(anyhow::Error::new(err).context(format!("deleting blob {key}"))),
        }
    }

    /// Removes a listed object, also one whose name is not a key this gateway writes.
    pub async fn delete_entry(&self, entry: &BlobEntry) -> anyhow::Result<()> {
        match self.inner.delete(&entry.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(anyhow::Error::new(err).context(format!("deleting {}", entry.key))),
        }
    }

    /// Removes every object under `prefix` (whole path segments: `jobs/a` does not cover `jobs/ab`).
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        let path = self.path(prefix)?;
        let locations = self
            .inner
            .list(Some(&path))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.inner.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => {
                    return Err(anyhow::Error::new(err).context(format!("deleting {prefix}")))
                }
            }
        }
        Ok(())
    }

    /// Every object under `prefix`, keys relative to the store's root. Objects whose names are not
    /// keys this gateway writes are listed too (the sweeper removes them once old).
    pub fn list(
        &self,
        prefix: &str,
    ) -> anyhow::Result<BoxStream<'static, anyhow::Result<BlobEntry>>> {
        let path = self.path(prefix)?;
        let root = self.prefix.clone();
        Ok(self
            .inner
            .list(Some(&path))
            .map(move |meta| {
                let meta = meta.context("listing blobs")?;
                let key = match &root {
                    Some(root) => meta
                        .location
                        .prefix_match(root)
                        .map(|parts| {
                            parts
                                .map(|part| part.as_ref().to_owned())
                                .collect::<Vec<_>>()
                                .join("/")
                        })
                        .unwrap_or_else(|| meta.location.to_string()),
                    None => meta.location.to_string(),
                };
                Ok(BlobEntry {
                    key,
                    size: meta.size,
                    last_modified: UnixMillis::from_millis(meta.last_modified.timestamp_millis()),
                    location: meta.location,
                })
            })
            .boxed())
    }
}

/// A key the gateway writes: `/`-separated segments of ASCII letters, digits, `-`, `_` and `.`, none
/// empty, `.` or `..`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// The media type stored with an object, from its key's extension.
fn content_type(key: &str) -> Option<&'static str> {
    Some(match key.rsplit_once('.')?.1 {
        "mp4" => "video/mp4",
        "png" => "image/png",
        "jpeg" | "jpg" => "image/jpeg",
        "webp" => "image/webp",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "m4a" => "audio/mp4",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_local_root_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("blobs");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let blobs = BlobStore::local(root.clone()).unwrap();
        assert_eq!(mode(&root), 0o700, "an existing root is tightened");
        let source = dir.path().join("src.bin");
        std::fs::write(&source, b"x").unwrap();
        blobs.put_file("jobs/t/j/in.bin", &source).await.unwrap();
        assert!(root.join("jobs/t/j/in.bin").is_file());
        let fresh = dir.path().join("a/b/blobs");
        BlobStore::local(fresh.clone()).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        for key in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            "a/b%2f",
            "a\\b",
        ] {
            assert!(!valid_key(key), "{key}");
        }
        assert!(valid_key("jobs/0193/0194/video.mp4"));
    }
}

//! `storage_url`, parsed: `file://<dir>` or `s3://bucket/prefix`.

use std::path::PathBuf;

/// Where objects are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on this machine.
    Local(PathBuf),
    /// A bucket, and a key prefix inside it (without slashes at either end; may be empty).
    S3 { bucket: String, prefix: String },
}

impl StorageLocation {
    /// Parses `storage_url`; an empty one is `file://<default_dir>`.
    pub fn parse(url: &str, default_dir: PathBuf) -> Result<Self, String> {
        if url.is_empty() {
            return Ok(Self::Local(default_dir));
        }
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(
                    "storage_url: file:// needs a directory, e.g. file:///var/lib/sonicgw/blobs"
                        .into(),
                );
            }
            return Ok(Self::Local(PathBuf::from(dir)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // S3's bucket naming rules: 3-63 lower-case letters, digits, dots and hyphens.
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                });
            if !bucket_ok {
                return Err(format!(
                    "storage_url: {bucket:?} is not an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() && !super::valid_key(prefix) {
                return Err(format!(
                    "storage_url: the prefix {prefix:?} may hold only letters, digits, -, _, . and /"
                ));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Err("storage_url must start with file:// or s3://".into())
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Self::S3 { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_parse() {
        let default = PathBuf::from("/data/blobs");
        assert_eq!(
            StorageLocation::parse("", default.clone()),
            Ok(StorageLocation::Local(default.clone()))
        );
        assert_eq!(
            StorageLocation::parse("file:///srv/blobs", default.clone()),
            Ok(StorageLocation::Local("/srv/blobs".into()))
        );
        assert_eq!(
            StorageLocation::parse("s3://media-bucket/sonicgw/prod/", default.clone()),
            Ok(StorageLocation::S3 {
                bucket: "media-bucket".into(),
                prefix: "sonicgw/prod".into()
            })
        );
        assert_eq!(
            StorageLocation::parse("s3://media-bucket", default.clone()),
            Ok(StorageLocation::S3 {
                bucket: "media-bucket".into(),
                prefix: String::new()
            })
        );
        for bad in [
            "s3://",
            "s3://Bad_Bucket/x",
            "s3://ok-bucket/../x",
            "gs://b/x",
            "file://",
            "/srv/blobs",
        ] {
            assert!(
                StorageLocation::parse(bad, default.clone()).is_err(),
                "{bad}"
            );
        }
    }
}

//! Signed, expiring download links: an HMAC-SHA256 over the path and expiry, so a link works without a
//! bearer token (like a CDN link, playable by a `<video>` tag) and any change to it is refused. The
//! links' path is written here once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::JobId;
use crate::storage::jobs::JobScope;
use crate::storage::TenantScope;

/// How finished videos are handed out (`delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Our signed links, streamed from storage by the gateway (with `Range` and `ETag`).
    Proxy,
    /// S3 presigned GET URLs with the links' lifetime: the bucket (or a CDN on it) serves the bytes.
    Presigned,
}

impl std::str::FromStr for Delivery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "proxy" => Ok(Self::Proxy),
            "presigned" => Ok(Self::Presigned),
            _ => Err(format!("delivery must be proxy or presigned, not {s:?}")),
        }
    }
}

/// Links through a CDN expire on a grid of this many seconds (at most), so that every view of a
/// video within one step gets the same URL and the CDN serves it from its cache.
const CDN_EXPIRY_STEP_S: i64 = 300;

/// When a link made at `now` expires: `now + ttl`, or for links through a CDN that instant rounded up
/// to the next step (a tenth of the lifetime, at most 5 minutes), so the link lives between `ttl` and
/// `ttl` plus one step.
pub fn link_expiry(now: i64, ttl: i64, cdn: bool) -> i64 {
    let expires = now + ttl;
    if !cdn {
        return expires;
    }
    let step = (ttl / 10).clamp(1, CDN_EXPIRY_STEP_S);
    expires.div_euclid(step) * step + if expires % step == 0 { 0 } else { step }
}

/// Where signed download links point: `{DOWNLOAD_PREFIX}{job}.mp4`.
pub const DOWNLOAD_PREFIX: &str = "/v1/files/videos/";

/// The path of a job's signed download link.
pub fn download_path(job: JobId) -> String {
    format!("{DOWNLOAD_PREFIX}{job}.mp4")
}

/// The scope a verified signed link reads its job in: any tenant's, because the signature over the
/// path is the authority and names exactly one job. Only for links that passed `verify_download`.
pub fn signed_link_scope() -> JobScope {
    JobScope {
        tenant: TenantScope::signed_link(),
        user: None,
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRejection {
    BadSignature,
    Expired,
}

/// Signs and checks links with one secret.
#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
}

impl UrlSigner {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    fn mac(&self, path: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// `path?expires=...&sig=...`.
    pub fn sign(&self, path: &str, expires: i64) -> String {
        let sig = URL_SAFE_NO_PAD.encode(self.mac(path, expires).finalize().into_bytes());
        format!("{path}?expires={expires}&sig={sig}")
    }

    /// Checks the signature in constant time, then the expiry.
    pub fn verify(
        &self,
        path: &str,
        expires: i64,
        sig: &str,
        now: i64,
    ) -> Result<(), LinkRejection> {
        let given = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| LinkRejection::BadSignature)?;
        self.mac(path, expires)
            .verify_slice(&given)
            .map_err(|_| LinkRejection::BadSignature)?;
        if expires < now {
            return Err(LinkRejection::Expired);
        }
        Ok(())
    }

    /// Checks a download link whose last path segment is `file` (`<job>.mp4`) and returns the job.
    pub fn verify_download(
        &self,
        file: &str,
        expires: i64,
        sig: &str,
        now: i64,
    ) -> Result<JobId, LinkRejection> {
        self.verify(&format!("{DOWNLOAD_PREFIX}{file}"), expires, sig, now)?;
        file.strip_suffix(".mp4")
            .and_then(|id| id.parse().ok())
            .ok_or(LinkRejection::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(link: &str) -> (String, i64, String) {
        let (path, query) = link.split_once('?').unwrap();
        let mut expires = 0;
        let mut sig = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            match k {
                "expires" => expires = v.parse().unwrap(),
                "sig" => sig = v.to_owned(),
                _ => {}
            }
        }
        (path.to_owned(), expires, sig)
    }

    #[test]
    fn signed_link_verifies_until_it_expires_and_not_after_any_change() {
        let signer = UrlSigner::new(b"secret".to_vec());
        let (path, expires, sig) = parts(&signer.sign("/v1/files/a.mp4", 1000));
        assert_eq!(signer.verify(&path, expires, &sig, 999), Ok(()));
        assert_eq!(
            signer.verify(&path, expires, &sig, 1001),
            Err(LinkRejection::Expired)
        );
        assert_eq!(
            signer.verify("/v1/files/b.mp4", expires, &sig, 999),
            Err(LinkRejection::BadSignature)
        );
        assert_eq!(
            signer.verify(&path, expires + 1, &sig, 999),
            Err(LinkRejection::BadSignature)
        );
        assert_eq!(
            signer.verify(&path, expires, "AAAA", 999),
            Err(LinkRejection::BadSignature)
        );
        let other = UrlSigner::new(b"other".to_vec());
        assert_eq!(
            other.verify(&path, expires, &sig, 999),
            Err(LinkRejection::BadSignature)
        );
    }

    #[test]
    fn cdn_links_share_an_expiry_within_a_step() {
        assert_eq!(link_expiry(1_000, 3600, false), 4_600);
        let a = link_expiry(1_000, 3600, true);
        let b = link_expiry(1_000 + 200, 3600, true);
        assert_eq!(a, b, "views 200 s apart share a link");
        assert_eq!(a % 300, 0);
        assert!((4_600..4_600 + 300).contains(&a));
        assert_eq!(link_expiry(1_200, 3600, true), 4_800, "already on the grid");
        assert_eq!(
            link_expiry(5, 10, true),
            15,
            "a 1 s step for short lifetimes"
        );
    }

    #[test]
    fn download_links_name_their_job() {
        let signer = UrlSigner::new(b"secret".to_vec());
        let job = JobId::generate();
        let (path, expires, sig) = parts(&signer.sign(&download_path(job), 1000));
        let file = path.strip_prefix(DOWNLOAD_PREFIX).unwrap();
        assert_eq!(signer.verify_download(file, expires, &sig, 999), Ok(job));
        let other = format!("{}.mp4", JobId::generate());
        assert_eq!(
            signer.verify_download(&other, expires, &sig, 999),
            Err(LinkRejection::BadSignature)
        );
        // A valid signature over a path that names no job is still refused.
        let (path, expires, sig) = parts(&signer.sign(&format!("{DOWNLOAD_PREFIX}x.mp4"), 1000));
        let file = path.strip_prefix(DOWNLOAD_PREFIX).unwrap();
        assert_eq!(
            signer.verify_download(file, expires, &sig, 999),
            Err(LinkRejection::BadSignature)
        );
    }
}

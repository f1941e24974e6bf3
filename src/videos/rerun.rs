//! Re-running a video: a new job from an earlier job's stored photo and recording with new parameters,
//! through the same intake as an upload (every check again, the caller's plan and quota).

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::intake::{IntakeError, Submission, Submitted, UploadedFile};
use super::view::JobInput;
use super::{input_key, VideoService};
use crate::audit::AuditContext;
use crate::domain::{PlanName, RawParams, TenantId, UserId};
use crate::storage::jobs::JobRecord;

/// Who re-runs, with which parameters.
pub struct Rerun {
    pub user: UserId,
    pub tenant: TenantId,
    pub plan: PlanName,
    pub fields: RawParams,
    pub idempotency_key: Option<String>,
}

async fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl VideoService {
    /// Submits `source`'s inputs again with `rerun`'s parameters. The caller found `source` with their
    /// own job scope, so they may see it; the new job is theirs.
    pub async fn rerun(
        &self,
        context: &AuditContext,
        source: &JobRecord,
        rerun: Rerun,
    ) -> Result<Submitted, IntakeError> {
        let input: JobInput = serde_json::from_str(&source.input)
            .map_err(|e| anyhow::anyhow!("stored job input is invalid: {e}"))?;
        let uploads = self.settings.work_dir.join("uploads");
        tokio::fs::create_dir_all(&uploads)
            .await
            .map_err(anyhow::Error::from)?;
        // Removed with the copies when this returns, whatever happens.
        let dir = tempfile::tempdir_in(&uploads).map_err(anyhow::Error::from)?;
        let fetch = |name: &'static str, format: &str| {
            let key = input_key(source.tenant_id, source.id, name, format);
            let path = dir.path().join(name);
            async move {
                self.blobs.fetch_to(&key, &path).await?;
                let sha256 = sha256_of(&path).await?;
                anyhow::Ok(UploadedFile { path, sha256 })
            }
        };
        let image = fetch("image", &input.image.format).await?;
        let audio = fetch("audio", &input.audio.format).await?;
        self.submit(
            context,
            Submission {
                user: rerun.user,
                tenant: rerun.tenant,
                plan: rerun.plan,
                image,
                audio,
                fields: rerun.fields,
                idempotency_key: rerun.idempotency_key,
            },
        )
        .await
    }
}

//! Previews: an upload checked exactly as a submission is (`intake::inspect`), answering what was found and
//! what would be made, and storing nothing.

use std::sync::Arc;

use super::admission::AdmissionRefusal;
use super::intake::{IntakeError, UploadedFile};
use super::view::{JobInput, OutputPlan};
use super::VideoService;
use crate::domain::{PlanName, RawParams, SonicParams, TenantId, UserId};

/// What `preview` found: the parameters as they would be stored, the uploads as measured, and the
/// video that would be made.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub params: SonicParams,
    pub input: JobInput,
    pub output: OutputPlan,
}

impl VideoService {
    /// Validates an upload exactly as `submit` would, and stores nothing: no job, no files, no quota,
    /// no audit record. `POST /v1/videos/preview` shows the result before the user submits.
    pub async fn preview(
        &self,
        tenant: TenantId,
        user: UserId,
        plan_name: &PlanName,
        fields: &RawParams,
        image: &UploadedFile,
        audio: &UploadedFile,
    ) -> Result<Preview, IntakeError> {
        let admitted =
            Arc::new(self.admission.enter(tenant, user).await.map_err(
                |refusal| match refusal {
                    AdmissionRefusal::UserBusy => IntakeError::UserBusy,
                    AdmissionRefusal::ServerBusy => IntakeError::ServerBusy,
                },
            )?);
        let plan = self.plans.limits(plan_name);
        let inspected = self
            .inspect(
                None,
                plan_name,
                &plan,
                fields,
                &image.path,
                &audio.path,
                admitted,
            )
            .await?;
        let (input, output) = inspected.describe();
        Ok(Preview {
            params: inspected.params,
            input,
            output,
        })
    }
}

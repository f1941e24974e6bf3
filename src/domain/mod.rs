//! Validated domain types: everything past the HTTP edge takes these, never raw strings.

pub mod ids;
pub mod job;
pub mod label;
pub mod params;
pub mod plan;
pub mod role;
pub mod user;

pub use ids::{FamilyId, Jti, TenantId, UserId, WorkerId};
pub use job::{JobId, JobStatus, Stage};
pub use label::{LabelLanguage, LabelText, LabelTexts};
pub use params::{ParamRejection, RawParams, SonicParams};
pub use plan::{Plan, PlanName, Plans};
pub use role::Role;
pub use user::{Password, PasswordPolicy, TenantName, Username};

/// A value that failed validation: the field (as the client named it) and the reason a client can act
/// on. The one type for invalid input, from domain parsing to the API's problem documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, utoipa::ToSchema)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

//! Validated domain types: everything past the HTTP edge takes these, never raw strings.

pub mod ids;
pub mod job;
pub mod params;
pub mod plan;
pub mod role;
pub mod user;

pub use ids::{TenantId, UserId};
pub use job::{JobId, JobStatus, Stage};
pub use params::{ParamError, RawParams, SonicParams};
pub use plan::{Plan, PlanName, Plans};
pub use role::Role;
pub use user::{Password, PasswordPolicy, TenantName, Username};

/// A value that failed validation, with the reason a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub message: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

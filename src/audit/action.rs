//! Every action the audit log records, by name. The names are stable: filters (`GET /v1/audit?action=`)
//! and exported logs use them.

use std::fmt;
use std::str::FromStr;

/// An audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A signed-in caller was refused by role or scope.
    AccessDenied,
    AuthLogin,
    AuthLogout,
    AuthRefresh,
    /// A used refresh token came back: its whole sign-in was revoked.
    AuthRefreshReuseDetected,
    AuthRevoke,
    TenantCreate,
    TenantUpdate,
    UserCreate,
    UserUpdate,
    UserDelete,
    VideoCreate,
    VideoDelete,
    VideoDownload,
    VideoSucceeded,
    VideoFailed,
    VideoCancelled,
    WebhookSecretRotate,
    /// A remote worker's service account was created.
    WorkerCreate,
    /// A remote worker's service account was disabled or enabled.
    WorkerUpdate,
    /// A remote worker obtained a token (`client_credentials`), or was refused one.
    AuthClientCredentials,
}

impl AuditAction {
    /// Every action, for validating filters and for documentation.
    pub const ALL: [AuditAction; 21] = [
        AuditAction::AccessDenied,
        AuditAction::AuthLogin,
        AuditAction::AuthLogout,
        AuditAction::AuthRefresh,
        AuditAction::AuthRefreshReuseDetected,
        AuditAction::AuthRevoke,
        AuditAction::TenantCreate,
        AuditAction::TenantUpdate,
        AuditAction::UserCreate,
        AuditAction::UserUpdate,
        AuditAction::UserDelete,
        AuditAction::VideoCreate,
        AuditAction::VideoDelete,
        AuditAction::VideoDownload,
        AuditAction::VideoSucceeded,
        AuditAction::VideoFailed,
        AuditAction::VideoCancelled,
        AuditAction::WebhookSecretRotate,
        AuditAction::WorkerCreate,
        AuditAction::WorkerUpdate,
        AuditAction::AuthClientCredentials,
    ];

    /// The stable name stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::AccessDenied => "access.denied",
            AuditAction::AuthLogin => "auth.login",
            AuditAction::AuthLogout => "auth.logout",
            AuditAction::AuthRefresh => "auth.refresh",
            AuditAction::AuthRefreshReuseDetected => "auth.refresh_reuse_detected",
            AuditAction::AuthRevoke => "auth.revoke",
            AuditAction::TenantCreate => "tenant.create",
            AuditAction::TenantUpdate => "tenant.update",
            AuditAction::UserCreate => "user.create",
            AuditAction::UserUpdate => "user.update",
            AuditAction::UserDelete => "user.delete",
            AuditAction::VideoCreate => "video.create",
            AuditAction::VideoDelete => "video.delete",
            AuditAction::VideoDownload => "video.download",
            AuditAction::VideoSucceeded => "video.succeeded",
            AuditAction::VideoFailed => "video.failed",
            AuditAction::VideoCancelled => "video.cancelled",
            AuditAction::WebhookSecretRotate => "webhook_secret.rotate",
            AuditAction::WorkerCreate => "worker.create",
            AuditAction::WorkerUpdate => "worker.update",
            AuditAction::AuthClientCredentials => "auth.client_credentials",
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an audited action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an audited action")]
pub struct UnknownAction;

impl FromStr for AuditAction {
    type Err = UnknownAction;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        AuditAction::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or(UnknownAction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditAction::ALL.len());
        for action in AuditAction::ALL {
            assert_eq!(action.as_str().parse::<AuditAction>(), Ok(action));
        }
        assert_eq!("video.explode".parse::<AuditAction>(), Err(UnknownAction));
    }
}

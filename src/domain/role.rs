//! Roles: what a user may do.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// A user's role. Ordered by power: `User < Admin < PlatformAdmin`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Generates videos and reads their own data.
    User,
    /// Manages their own tenant's users and reads its audit log.
    Admin,
    /// Manages every tenant.
    PlatformAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::PlatformAdmin => "platform_admin",
        }
    }

    /// Admins and platform admins.
    pub fn is_admin(self) -> bool {
        self >= Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            "platform_admin" => Ok(Role::PlatformAdmin),
            _ => Err(FieldError::new(
                "role",
                "must be one of user, admin, platform_admin",
            )),
        }
    }
}

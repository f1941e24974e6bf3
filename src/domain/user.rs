//! Usernames, tenant names and passwords, each parsed once at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::FieldError;

fn parse_handle(field: &'static str, raw: &str, max: usize) -> Result<String, FieldError> {
    let value = raw.trim();
    if value.is_empty() || value.len() > max {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if !value.chars().all(allowed) {
        return Err(FieldError::new(
            field,
            "may contain only letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// A login name: 1-64 characters of `[A-Za-z0-9._@-]`, compared case-insensitively (stored lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        parse_handle("username", raw, 64).map(Self)
    }

    /// Wraps a value read back from storage.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's name: 1-64 characters of `[A-Za-z0-9._@-]`, unique, stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        parse_handle("name", raw, 64).map(Self)
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Length bounds for new passwords (configuration `password_min_length`, `password_max_length`).
#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub max_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 12,
            max_length: 256,
        }
    }
}

/// A new password that meets the policy. Zeroed on drop; never printed by `Debug`.
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn parse(raw: String, policy: PasswordPolicy) -> Result<Self, FieldError> {
        let raw = Zeroizing::new(raw);
        let length = raw.chars().count();
        if length < policy.min_length || length > policy.max_length {
            return Err(FieldError::new(
                "password",
                format!(
                    "must be {} to {} characters",
                    policy.min_length, policy.max_length
                ),
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_is_lowercased_and_restricted() {
        assert_eq!(Username::parse(" Alice ").unwrap().as_str(), "alice");
        assert!(Username::parse("a/b").is_err());
        assert!(Username::parse("").is_err());
        assert!(Username::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn password_length_is_enforced_in_characters() {
        let policy = PasswordPolicy::default();
        assert!(Password::parse("short".into(), policy).is_err());
        assert!(Password::parse("ééééééééééé".into(), policy).is_err());
        assert!(Password::parse("éééééééééééé".into(), policy).is_ok());
        assert!(Password::parse("x".repeat(257), policy).is_err());
        assert_eq!(
            format!(
                "{:?}",
                Password::parse("correct horse battery".into(), policy).unwrap()
            ),
            "Password(<redacted>)"
        );
    }
}

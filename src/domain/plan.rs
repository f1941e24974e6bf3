//! Plans: the limits a user works within. Built-in `free` and `pro`, overridable and extendable in configuration.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::FieldError;

/// The name of a plan that exists in the configuration.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct PlanName(String);

impl PlanName {
    /// Parses a plan name and checks that the plan is configured.
    pub fn parse(name: &str, plans: &Plans) -> Result<Self, FieldError> {
        if plans.get(name).is_none() {
            let known: Vec<&str> = plans.names().collect();
            return Err(FieldError::new(
                "plan",
                format!("unknown plan; known plans: {}", known.join(", ")),
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// Wraps a name read back from storage, where it was validated on the way in.
    pub fn from_stored(name: String) -> Self {
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a plan allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Largest `min_resolution` (short side of the output, px).
    pub max_resolution: u32,
    /// Longest audio, seconds.
    pub max_duration_s: u32,
    pub max_inference_steps: u32,
    pub videos_per_day: u32,
    pub max_concurrent_jobs: u32,
    /// Share of the queue relative to other tenants (weighted fair queuing).
    pub priority_weight: u32,
    pub allow_lip_sync_correction: bool,
    /// Requests per minute of one user (token bucket of this size; `/v1/worker/*`, health, metrics
    /// and JWKS are not counted). Default 60.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Requests per minute of a whole tenant, all its users together, for callers on this plan.
    /// Default: 10 times `requests_per_minute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_requests_per_minute: Option<u32>,
    /// Previews (`POST /v1/videos/preview`) per minute of one user; a whole tenant may make 10 times
    /// as many. A preview costs the checks of a submission (decoding, a face scan) and no quota, so
    /// it has a budget of its own. Default 10.
    #[serde(default = "default_previews_per_minute")]
    pub previews_per_minute: u32,
}

fn default_requests_per_minute() -> u32 {
    60
}

fn default_previews_per_minute() -> u32 {
    10
}

impl Plan {
    pub fn free() -> Self {
        Self {
            max_resolution: 512,
            max_duration_s: 30,
            max_inference_steps: 25,
            videos_per_day: 5,
            max_concurrent_jobs: 1,
            priority_weight: 1,
            allow_lip_sync_correction: false,
            requests_per_minute: 60,
            tenant_requests_per_minute: None,
            previews_per_minute: 10,
        }
    }

    pub fn pro() -> Self {
        Self {
            max_resolution: 1024,
            max_duration_s: 300,
            max_inference_steps: 50,
            videos_per_day: 200,
            max_concurrent_jobs: 4,
            priority_weight: 4,
            allow_lip_sync_correction: true,
            requests_per_minute: 600,
            tenant_requests_per_minute: None,
            previews_per_minute: 30,
        }
    }

    /// The request rate limits of a caller on this plan.
    pub fn request_quota(&self) -> crate::ratelimit::Quota {
        crate::ratelimit::Quota {
            user: self.requests_per_minute,
            tenant: self
                .tenant_requests_per_minute
                .unwrap_or_else(|| self.requests_per_minute.saturating_mul(10)),
        }
    }

    /// The preview budget of a caller on this plan.
    pub fn preview_quota(&self) -> crate::ratelimit::Quota {
        crate::ratelimit::Quota {
            user: self.previews_per_minute,
            tenant: self.previews_per_minute.saturating_mul(10),
        }
    }

    fn validate(&self, name: &str) -> Result<(), String> {
        if self.requests_per_minute == 0 || self.tenant_requests_per_minute == Some(0) {
            return Err(format!(
                "plan {name}: requests_per_minute and tenant_requests_per_minute must be at least 1"
            ));
        }
        if self.previews_per_minute == 0 {
            return Err(format!(
                "plan {name}: previews_per_minute must be at least 1"
            ));
        }
        if self.priority_weight == 0 {
            return Err(format!("plan {name}: priority_weight must be at least 1"));
        }
        if self.max_concurrent_jobs == 0 {
            return Err(format!(
                "plan {name}: max_concurrent_jobs must be at least 1"
            ));
        }
        Ok(())
    }
}

/// All configured plans by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Plans(BTreeMap<String, Plan>);

impl Plans {
    /// The built-in plans with the configured ones laid over them (same name replaces).
    pub fn with_overrides(configured: BTreeMap<String, Plan>) -> Result<Self, String> {
        let mut plans = BTreeMap::from([
            ("free".to_owned(), Plan::free()),
            ("pro".to_owned(), Plan::pro()),
        ]);
        for (name, plan) in configured {
            let valid_name = !name.is_empty()
                && name.len() <= 32
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !valid_name {
                return Err(format!(
                    "plan name {name:?}: use 1-32 characters of a-z, 0-9, _ and -"
                ));
            }
            plan.validate(&name)?;
            plans.insert(name, plan);
        }
        Ok(Self(plans))
    }

    pub fn get(&self, name: &str) -> Option<&Plan> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The limits of a plan; plans removed from configuration fall back to `free`.
    pub fn limits(&self, name: &PlanName) -> Plan {
        self.0
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(Plan::free)
    }
}

impl Default for Plans {
    fn default() -> Self {
        Self::with_overrides(BTreeMap::new()).expect("built-in plans are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_plans_have_documented_limits() {
        let plans = Plans::default();
        assert_eq!(plans.get("free").unwrap().max_resolution, 512);
        assert_eq!(plans.get("pro").unwrap().videos_per_day, 200);
    }

    #[test]
    fn configured_plan_overrides_builtin_and_unknown_name_is_refused() {
        let mut custom = Plan::free();
        custom.videos_per_day = 9;
        let plans = Plans::with_overrides(BTreeMap::from([("free".into(), custom)])).unwrap();
        assert_eq!(plans.get("free").unwrap().videos_per_day, 9);
        assert!(PlanName::parse("gold", &plans).is_err());
        assert!(
            Plans::with_overrides(BTreeMap::from([("Bad Name".into(), Plan::free())])).is_err()
        );
    }
}

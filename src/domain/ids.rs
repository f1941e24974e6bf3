//! Identifiers: UUIDv7 ids, which sort by creation time, and the opaque text ids of tokens and workers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::FieldError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies a tenant.
    TenantId
);
uuid_id!(
    /// Identifies a user (the `sub` of their tokens).
    UserId
);

/// The longest opaque id accepted back from the database or a token.
const MAX_OPAQUE_ID_LEN: usize = 64;

/// Checks an opaque id: 1 to 64 characters of the URL-safe alphabet `A-Z a-z 0-9 - _`. Ids are embedded
/// in Redis keys (`<prefix>:revoked:<jti>`) and space-separated pub/sub messages, so separators and
/// whitespace must never get in.
fn check_opaque_id(field: &'static str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_OPAQUE_ID_LEN {
        return Err(FieldError::new(field, "must be 1 to 64 characters long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(FieldError::new(
            field,
            "may contain only letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

/// An id that is text we generate: it can only be built here (generated) or by `parse` (validated).
macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates an id read back from the database or a token.
            pub fn parse(value: &str) -> Result<Self, FieldError> {
                check_opaque_id($field, value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

opaque_id!(
    /// Identifies an access token (its `jti` claim): what the denylist and the access-token record key on.
    Jti,
    "jti"
);
opaque_id!(
    /// Identifies a refresh-token family: one sign-in and every token rotated from it.
    FamilyId,
    "family_id"
);
opaque_id!(
    /// Identifies a job worker (`<instance>-<index>`): the holder of a job's lease.
    WorkerId,
    "worker_id"
);

/// 32 random lowercase hex digits (a UUIDv4 without hyphens).
fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Jti {
    /// A new random token id.
    pub fn generate() -> Self {
        Self(random_hex())
    }
}

impl FamilyId {
    /// A new random family id, for a sign-in.
    pub fn generate() -> Self {
        Self(random_hex())
    }
}

impl WorkerId {
    /// Ids for `count` workers of a new process instance: `<12 random hex digits>-<index>`.
    pub fn for_new_instance(count: usize) -> Vec<Self> {
        let instance = random_hex();
        (0..count)
            .map(|index| Self(format!("{}-{index}", &instance[..12])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_opaque_ids_parse_back() {
        for jti in [Jti::generate(), Jti::generate()] {
            assert_eq!(jti.as_str().len(), 32);
            assert_eq!(Jti::parse(jti.as_str()), Ok(jti.clone()));
            assert_eq!(jti.to_string().parse::<Jti>(), Ok(jti));
        }
        let family = FamilyId::generate();
        assert_eq!(FamilyId::parse(family.as_str()), Ok(family));
        let workers = WorkerId::for_new_instance(3);
        assert_eq!(workers.len(), 3);
        for (index, worker) in workers.iter().enumerate() {
            assert!(worker.as_str().ends_with(&format!("-{index}")), "{worker}");
            assert_eq!(worker.as_str().len(), 14);
            assert_eq!(WorkerId::parse(worker.as_str()).as_ref(), Ok(worker));
        }
        assert_eq!(workers[0].as_str()[..12], workers[2].as_str()[..12]);
    }

    #[test]
    fn opaque_ids_accept_hyphenated_uuids_and_short_names() {
        let uuid = uuid::Uuid::new_v4().to_string();
        assert!(Jti::parse(&uuid).is_ok());
        assert!(FamilyId::parse("f1").is_ok());
        assert!(WorkerId::parse("crashed-worker").is_ok());
        assert!(WorkerId::parse("worker_7").is_ok());
    }

    #[test]
    fn opaque_ids_refuse_empty_values() {
        assert_eq!(Jti::parse("").unwrap_err().field, "jti");
        assert_eq!(FamilyId::parse("").unwrap_err().field, "family_id");
        assert_eq!(WorkerId::parse("").unwrap_err().field, "worker_id");
    }

    #[test]
    fn opaque_ids_refuse_more_than_64_characters() {
        let longest = "a".repeat(64);
        let over = "a".repeat(65);
        assert!(Jti::parse(&longest).is_ok());
        assert!(Jti::parse(&over).is_err());
        assert!(FamilyId::parse(&longest).is_ok());
        assert!(FamilyId::parse(&over).is_err());
        assert!(WorkerId::parse(&longest).is_ok());
        assert!(WorkerId::parse(&over).is_err());
    }

    #[test]
    fn opaque_ids_refuse_characters_outside_the_url_safe_alphabet() {
        for bad in ["a b", "a:b", "a/b", "a.b", "a\nb", "é", "a+b", "a=b"] {
            assert!(Jti::parse(bad).is_err(), "{bad:?}");
            assert!(FamilyId::parse(bad).is_err(), "{bad:?}");
            assert!(WorkerId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn opaque_ids_are_plain_strings_in_json_and_validated_when_read() {
        let jti = Jti::parse("abc_123-x").unwrap();
        assert_eq!(serde_json::to_string(&jti).unwrap(), "\"abc_123-x\"");
        assert_eq!(serde_json::from_str::<Jti>("\"abc_123-x\"").unwrap(), jti);
        assert!(serde_json::from_str::<Jti>("\"a b\"").is_err());
        assert!(serde_json::from_str::<WorkerId>("\"\"").is_err());
        assert!(serde_json::from_str::<FamilyId>("\"x:y\"").is_err());
    }
}

//! Reading a video's Content Credentials back: the manifest store as c2pa validates it, offline
//! (no remote manifest, no OCSP: see the module above), with a time budget. Synchronous: callers run
//! it on a blocking thread, after checking the file's size and MP4 structure.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::manifest::JOB_ASSERTION;

/// What a file's C2PA manifest store says and how it validates.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CredentialsReport {
    /// `absent` (no manifest), `invalid` (a check failed: tampered bytes, a bad signature, a
    /// malformed manifest), `valid` (intact and signed, by a certificate no configured trust anchor
    /// vouches for: the self-signed default), or `trusted` (valid and signed under a trust anchor).
    pub state: CredentialsState,
    /// The failed checks, with C2PA's codes (`assertion.bmffHash.mismatch`,
    /// `signingCredential.untrusted`, ...).
    pub failures: Vec<ValidationFailure>,
    /// The active manifest's label (`urn:c2pa:...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_manifest: Option<String>,
    /// Who signed it, as its certificate says.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub signature: Option<Value>,
    /// The `c2pa.created` action (digital source type, software agent), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub created: Option<Value>,
    /// Our `org.sonicgw.job` assertion: job id, pseudonymous producer, engine, model, input digests,
    /// labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub job: Option<Value>,
    /// The whole manifest store as c2pa reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub manifest_store: Option<Value>,
}

/// A manifest store's validation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsState {
    Absent,
    Invalid,
    Valid,
    Trusted,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ValidationFailure {
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl CredentialsReport {
    fn absent() -> Self {
        Self {
            state: CredentialsState::Absent,
            failures: Vec::new(),
            active_manifest: None,
            signature: None,
            created: None,
            job: None,
            manifest_store: None,
        }
    }

    /// A manifest that could not even be read as one (broken JUMBF, CBOR, COSE).
    fn unreadable(err: &c2pa::Error) -> Self {
        Self {
            state: CredentialsState::Invalid,
            failures: vec![ValidationFailure {
                code: "manifest.unreadable".to_owned(),
                explanation: Some(clip(&err.to_string(), 200)),
            }],
            ..Self::absent()
        }
    }

    /// Whether the manifest says the visible AI label was drawn (`None` without our assertion).
    pub fn visible_label_claimed(&self) -> Option<bool> {
        self.job.as_ref()?["labels"]["visible_label"].as_bool()
    }
}

/// Why a file's credentials could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading the C2PA manifest took longer than {0:?}")]
    TimedOut(Duration),
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and validates the manifest store of the MP4 at `path`; `trust_anchors` (PEM) are the
/// roots whose signers count as trusted.
pub fn inspect(
    path: &Path,
    trust_anchors: Option<&str>,
    budget: Duration,
) -> Result<CredentialsReport, InspectError> {
    let context = match super::offline_context(trust_anchors, budget) {
        Ok(context) => context,
        Err(err) => return Err(InspectError::Io(std::io::Error::other(err.to_string()))),
    };
    let file = std::fs::File::open(path)?;
    let reader = match c2pa::Reader::from_context(context).with_stream("video/mp4", file) {
        Ok(reader) => reader,
        Err(c2pa::Error::JumbfNotFound | c2pa::Error::ProvenanceMissing) => {
            return Ok(CredentialsReport::absent())
        }
        Err(c2pa::Error::OperationCancelled) => return Err(InspectError::TimedOut(budget)),
        Err(err) => return Ok(CredentialsReport::unreadable(&err)),
    };
    let state = match reader.validation_state() {
        c2pa::ValidationState::Invalid => CredentialsState::Invalid,
        c2pa::ValidationState::Valid => CredentialsState::Valid,
        c2pa::ValidationState::Trusted => CredentialsState::Trusted,
    };
    let failures = reader
        .validation_status()
        .unwrap_or_default()
        .iter()
        .filter(|status| !status.passed())
        .map(|status| ValidationFailure {
            code: status.code().to_owned(),
            explanation: status.explanation().map(|e| clip(e, 200)),
        })
        .collect();
    let store: Option<Value> = serde_json::from_str(&reader.json()).ok();
    let active_label = reader.active_label().map(str::to_owned);
    let active = store
        .as_ref()
        .zip(active_label.as_ref())
        .map(|(store, label)| store["manifests"][label].clone());
    let assertion = |label: &str| {
        active.as_ref().and_then(|manifest| {
            manifest["assertions"]
                .as_array()?
                .iter()
                .find(|a| a["label"].as_str() == Some(label))
                .map(|a| a["data"].clone())
        })
    };
    let created = assertion("c2pa.actions.v2")
        .or_else(|| assertion("c2pa.actions"))
        .and_then(|actions| {
            actions["actions"]
                .as_array()?
                .iter()
                .find(|a| a["action"] == "c2pa.created")
                .cloned()
        });
    Ok(CredentialsReport {
        state,
        failures,
        active_manifest: active_label,
        signature: active
            .as_ref()
            .map(|m| m["signature_info"].clone())
            .filter(|s| !s.is_null()),
        created,
        job: assertion(JOB_ASSERTION),
        manifest_store: store,
    })
}

/// At most `max` characters of a message from the parser (which may quote the file).
fn clip(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

//! What a video's C2PA manifest says: created by a trained algorithm (`c2pa.created` with IPTC's
//! `trainedAlgorithmicMedia`), by which software, engine and model, for which job and which
//! (pseudonymous) producer, from which inputs (their SHA-256 only: the photo and the recording are
//! never embedded), and which labels the video carries.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// IPTC's digital source type of media made by a trained model.
pub const TRAINED_ALGORITHMIC_MEDIA: &str =
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// Our own assertion: the job, the producer and the labels.
pub const JOB_ASSERTION: &str = "org.sonicgw.job";

/// The name of this software in manifests.
pub const SOFTWARE: &str = "sonicgw";

/// One input of a job, as a manifest names it: what it was and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputDigest {
    /// The MIME type of the file the job kept.
    pub format: String,
    /// Lower-case hex SHA-256 of that file.
    pub sha256: String,
}

/// Everything one video's manifest states.
#[derive(Debug, Clone)]
pub struct ManifestFacts {
    pub job_id: String,
    /// [`ProducerIds::producer_id`] of the job's owner: never a name or an address.
    pub producer: String,
    pub engine: String,
    /// The engine's model (Sonic's checkpoints, or the built-in animator).
    pub model: String,
    pub photo: InputDigest,
    pub recording: InputDigest,
    /// Whether the visible AI label was drawn (`explicit_label`).
    pub visible_label: bool,
    /// Whether the corner mark stays after the opening label.
    pub corner_mark: bool,
    /// The label's language: `zh`, `en` or `both`.
    pub label_language: String,
    /// The AIGC metadata's `ContentProducer` (the operator's service name or filing number).
    pub aigc_producer: String,
}

impl ManifestFacts {
    /// The manifest definition c2pa's `Builder` takes.
    pub fn definition(&self) -> Value {
        let agent = json!({
            "name": SOFTWARE,
            "version": env!("CARGO_PKG_VERSION"),
            "org.sonicgw.engine": self.engine,
            "org.sonicgw.model": self.model,
        });
        let ingredient = |title: &str, input: &InputDigest, description: &str| {
            json!({
                "title": title,
                "format": input.format,
                "relationship": "inputTo",
                "instance_id": format!("sha256:{}", input.sha256),
                "description": description,
            })
        };
        json!({
            "title": format!("{}.mp4", self.job_id),
            "claim_generator_info": [{ "name": SOFTWARE, "version": env!("CARGO_PKG_VERSION") }],
            "ingredients": [
                ingredient(
                    "photo",
                    &self.photo,
                    "the face photo the video was made from; only its SHA-256 is recorded",
                ),
                ingredient(
                    "recording",
                    &self.recording,
                    "the speech the video was made from; only its SHA-256 is recorded",
                ),
            ],
            "assertions": [
                {
                    "label": "c2pa.actions.v2",
                    "data": {
                        "actions": [{
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": agent,
                            "description": "a talking-head video generated from a photo and a recording",
                        }]
                    }
                },
                {
                    "label": JOB_ASSERTION,
                    "data": {
                        "job_id": self.job_id,
                        "producer": self.producer,
                        "engine": self.engine,
                        "model": self.model,
                        "inputs": {
                            "photo": { "format": self.photo.format, "sha256": self.photo.sha256 },
                            "recording": {
                                "format": self.recording.format,
                                "sha256": self.recording.sha256,
                            },
                        },
                        "labels": {
                            "aigc_metadata": true,
                            "aigc_content_producer": self.aigc_producer,
                            "visible_label": self.visible_label,
                            "corner_mark": self.visible_label && self.corner_mark,
                            "language": self.label_language,
                        },
                    }
                }
            ]
        })
    }
}

/// Pseudonymous producer ids: an HMAC of the tenant and user ids under a server secret, so a
/// manifest never carries a username or an address, the same user always gets the same id, and only
/// the operator (who holds the secret) can tell whose it is.
#[derive(Clone)]
pub struct ProducerIds {
    key: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ProducerIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProducerIds(<redacted>)")
    }
}

impl ProducerIds {
    /// Keys derived from `secret` (the signed-link secret) for this use only.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"sonicgw c2pa producer id v1");
        Self {
            key: zeroize::Zeroizing::new(mac.finalize().into_bytes().to_vec()),
        }
    }

    /// `sgw:` and 32 hex digits (128 bits of the HMAC).
    pub fn producer_id(&self, tenant: &str, user: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(tenant.as_bytes());
        mac.update(b"\n");
        mac.update(user.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("sgw:{}", hex::encode(&digest[..16]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ManifestFacts {
        ManifestFacts {
            job_id: "0190c5a0-0000-7000-8000-000000000000".into(),
            producer: ProducerIds::new(b"secret").producer_id("t", "u"),
            engine: "builtin".into(),
            model: "sonicgw builtin animator".into(),
            photo: InputDigest {
                format: "image/png".into(),
                sha256: "ab".repeat(32),
            },
            recording: InputDigest {
                format: "audio/wav".into(),
                sha256: "cd".repeat(32),
            },
            visible_label: true,
            corner_mark: false,
            label_language: "both".into(),
            aigc_producer: "sonicgw".into(),
        }
    }

    #[test]
    fn the_created_action_names_a_trained_model_and_the_software() {
        let definition = facts().definition();
        let action = &definition["assertions"][0]["data"]["actions"][0];
        assert_eq!(action["action"], "c2pa.created");
        assert_eq!(action["digitalSourceType"], TRAINED_ALGORITHMIC_MEDIA);
        assert_eq!(action["softwareAgent"]["name"], "sonicgw");
        assert_eq!(action["softwareAgent"]["org.sonicgw.engine"], "builtin");
        assert_eq!(
            definition["ingredients"][0]["instance_id"],
            format!("sha256:{}", "ab".repeat(32))
        );
        assert_eq!(
            definition["assertions"][1]["data"]["labels"]["corner_mark"],
            false
        );
    }

    #[test]
    fn producer_ids_are_stable_per_user_and_reveal_nothing_without_the_secret() {
        let ids = ProducerIds::new(b"server secret");
        let a = ids.producer_id("tenant-1", "user-1");
        assert_eq!(a, ids.producer_id("tenant-1", "user-1"));
        assert_ne!(a, ids.producer_id("tenant-1", "user-2"));
        assert_ne!(
            a,
            ProducerIds::new(b"another secret").producer_id("tenant-1", "user-1")
        );
        assert!(a.starts_with("sgw:") && a.len() == 36, "{a}");
        assert!(!a.contains("user-1"));
    }
}

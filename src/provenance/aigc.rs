//! The implicit label of GB 45438-2025 (网络安全技术 人工智能生成合成内容标识方法): file metadata under
//! the key `AIGC` whose value is a JSON object with the fields below, spelled exactly as the standard
//! and TC260's practice guide (TC260-PG-20258A) spell them. A generation service fills the producer's
//! fields; `ContentPropagator` and `PropagateID` are for the platforms that later distribute the
//! file, and stay empty here.

use serde::{Deserialize, Serialize};

/// The metadata key.
pub const AIGC_KEY: &str = "AIGC";

/// `Label` for content that is AI-generated or synthesised (`1`; `2` and `3` are for content that may
/// be, or is suspected to be, which distributors detect).
pub const LABEL_GENERATED: &str = "1";

/// The standard's metadata fields, in the standard's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AigcMetadata {
    /// 生成合成标签: `1` (AI-generated).
    #[serde(rename = "Label")]
    pub label: String,
    /// 生成合成服务提供者: the service's name or code (`aigc_producer_id`).
    #[serde(rename = "ContentProducer")]
    pub content_producer: String,
    /// 内容制作编号: unique per piece of content; the job id.
    #[serde(rename = "ProduceID")]
    pub produce_id: String,
    /// 预留字段1: for the producer's own integrity information; unused (empty).
    #[serde(rename = "ReservedCode1")]
    pub reserved_code1: String,
    /// 内容传播服务提供者: filled by a distributing platform; empty.
    #[serde(rename = "ContentPropagator")]
    pub content_propagator: String,
    /// 内容传播编号: filled by a distributing platform; empty.
    #[serde(rename = "PropagateID")]
    pub propagate_id: String,
    /// 预留字段2: for the distributor's integrity information; empty.
    #[serde(rename = "ReservedCode2")]
    pub reserved_code2: String,
}

impl AigcMetadata {
    /// The producer's metadata of one generated video.
    pub fn generated(producer: &str, produce_id: &str) -> Self {
        Self {
            label: LABEL_GENERATED.to_owned(),
            content_producer: producer.to_owned(),
            produce_id: produce_id.to_owned(),
            reserved_code1: String::new(),
            content_propagator: String::new(),
            propagate_id: String::new(),
            reserved_code2: String::new(),
        }
    }

    /// The JSON value stored under [`AIGC_KEY`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("string fields always serialise")
    }
}

/// A producer id fit for the metadata: 1 to 128 characters, one line without control characters
/// (it is the operator's configured name or filing number).
pub fn valid_producer_id(id: &str) -> bool {
    (1..=128).contains(&id.chars().count()) && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_and_ordered_as_the_standard_names_them() {
        let json =
            AigcMetadata::generated("sonicgw", "0190c5a0-0000-7000-8000-000000000000").to_json();
        assert_eq!(
            json,
            r#"{"Label":"1","ContentProducer":"sonicgw","ProduceID":"0190c5a0-0000-7000-8000-000000000000","ReservedCode1":"","ContentPropagator":"","PropagateID":"","ReservedCode2":""}"#
        );
        let back: AigcMetadata = serde_json::from_str(&json).unwrap();
        assert_eq!(back.produce_id, "0190c5a0-0000-7000-8000-000000000000");
    }

    #[test]
    fn producer_ids_are_one_line() {
        assert!(valid_producer_id("京网信备11010000000000000001号"));
        assert!(!valid_producer_id(""));
        assert!(!valid_producer_id("a\nb"));
        assert!(!valid_producer_id(&"x".repeat(129)));
    }
}

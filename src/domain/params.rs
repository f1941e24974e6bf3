//! Sonic's generation parameters, parsed and range-checked at the edge, then checked against the plan.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{FieldError, LabelLanguage, Plan};

/// Why parameters were refused: every invalid field, and whether `duration` contradicted the audio's
/// measured length (its own error code, since the fix is different: measure the file again).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamRejection {
    pub errors: Vec<FieldError>,
    pub duration_mismatch: bool,
}

impl ParamRejection {
    /// The stable error code: `duration_mismatch` or `validation_failed`.
    pub fn code(&self) -> &'static str {
        if self.duration_mismatch {
            "duration_mismatch"
        } else {
            "validation_failed"
        }
    }
}

fn error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError::new(field, message)
}

/// Validated parameters of one video job (Sonic's, plus the gateway's own `motion_scale` and lip-sync offset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SonicParams {
    /// Seconds; equals the audio's duration.
    pub duration: f64,
    /// Short side of the output, px: a multiple of 64 in [128, 2048].
    pub min_resolution: u32,
    /// How far the face box is grown before cropping, [0.1, 1.0].
    pub expand_ratio: f64,
    /// Diffusion steps, [1, 100].
    pub inference_steps: u32,
    /// Liveliness of mouth and face motion, [0.5, 2.0].
    pub dynamic_scale: f64,
    /// Amount of head motion, [0.5, 2.0].
    pub motion_scale: f64,
    /// Sampling seed, [0, 2^31-1].
    pub seed: u32,
    pub enable_lip_sync_correction: bool,
    /// Audio shift in seconds when correction is on, [-1.0, 1.0].
    pub lip_sync_offset: f64,
    pub engine: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The visible AI label's language: `zh`, `en` or `both` (the default).
    #[serde(default)]
    pub label_language: LabelLanguage,
}

/// The text fields of an upload, by name.
pub type RawParams = HashMap<String, String>;

/// Field names a request may carry besides the files.
pub const PARAM_FIELDS: &[&str] = &[
    "duration",
    "min_resolution",
    "expand_ratio",
    "inference_steps",
    "dynamic_scale",
    "motion_scale",
    "seed",
    "enable_lip_sync_correction",
    "lip_sync_offset",
    "engine",
    "callback_url",
    "label_language",
];

fn number<T: std::str::FromStr>(
    raw: &RawParams,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    let value = raw.get(field)?.trim();
    match value.parse::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            errors.push(error(field, format!("{value:?} is not a valid number")));
            None
        }
    }
}

fn in_range_f64(
    raw: &RawParams,
    field: &str,
    default: f64,
    (min, max): (f64, f64),
    errors: &mut Vec<FieldError>,
) -> f64 {
    match number::<f64>(raw, field, errors) {
        Some(v) if v.is_finite() && (min..=max).contains(&v) => v,
        Some(_) => {
            errors.push(error(field, format!("must be between {min} and {max}")));
            default
        }
        None => default,
    }
}

fn in_range_u32(
    raw: &RawParams,
    field: &str,
    default: u32,
    (min, max): (u32, u32),
    errors: &mut Vec<FieldError>,
) -> u32 {
    match number::<i64>(raw, field, errors) {
        Some(v) if (i64::from(min)..=i64::from(max)).contains(&v) => v as u32,
        Some(_) => {
            errors.push(error(
                field,
                format!("must be an integer between {min} and {max}"),
            ));
            default
        }
        None => default,
    }
}

impl SonicParams {
    /// Parses the fields against Sonic's ranges. `audio_duration` is the measured length of the upload.
    pub fn parse(
        raw: &RawParams,
        audio_duration: f64,
        default_engine: &str,
    ) -> Result<Self, ParamRejection> {
        let mut errors = Vec::new();
        let mut duration_mismatch = false;
        for name in raw.keys() {
            if !PARAM_FIELDS.contains(&name.as_str()) {
                errors.push(error(name, "is not a parameter of this endpoint"));
            }
        }
        let duration = match number::<f64>(raw, "duration", &mut errors) {
            Some(d) if !d.is_finite() => {
                errors.push(error("duration", "must be a finite number of seconds"));
                audio_duration
            }
            Some(d) if (d - audio_duration).abs() > 0.1 => {
                duration_mismatch = true;
                errors.push(error(
                    "duration",
                    format!("{d} s was given but the audio is {audio_duration:.3} s long"),
                ));
                audio_duration
            }
            _ => audio_duration,
        };
        let min_resolution = in_range_u32(raw, "min_resolution", 512, (128, 2048), &mut errors);
        if !min_resolution.is_multiple_of(64) {
            errors.push(error("min_resolution", "must be a multiple of 64"));
        }
        let enable_lip_sync_correction =
            match raw.get("enable_lip_sync_correction").map(|v| v.trim()) {
                None => false,
                Some("true" | "1") => true,
                Some("false" | "0") => false,
                Some(_) => {
                    errors.push(error("enable_lip_sync_correction", "must be true or false"));
                    false
                }
            };
        let lip_sync_offset = in_range_f64(raw, "lip_sync_offset", 0.0, (-1.0, 1.0), &mut errors);
        if lip_sync_offset != 0.0 && !enable_lip_sync_correction {
            errors.push(error(
                "lip_sync_offset",
                "a non-zero offset needs enable_lip_sync_correction=true",
            ));
        }
        let callback_url = raw.get("callback_url").map(|u| u.trim().to_owned());
        if let Some(url) = &callback_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                errors.push(error("callback_url", "must be an http(s) URL"));
            }
        }
        let label_language = match raw.get("label_language") {
            None => LabelLanguage::default(),
            Some(raw) => LabelLanguage::parse(raw).unwrap_or_else(|e| {
                errors.push(e);
                LabelLanguage::default()
            }),
        };
        let params = SonicParams {
            duration,
            min_resolution,
            expand_ratio: in_range_f64(raw, "expand_ratio", 0.5, (0.1, 1.0), &mut errors),
            inference_steps: in_range_u32(raw, "inference_steps", 25, (1, 100), &mut errors),
            dynamic_scale: in_range_f64(raw, "dynamic_scale", 1.0, (0.5, 2.0), &mut errors),
            motion_scale: in_range_f64(raw, "motion_scale", 1.0, (0.5, 2.0), &mut errors),
            seed: in_range_u32(raw, "seed", 0, (0, i32::MAX as u32), &mut errors),
            enable_lip_sync_correction,
            lip_sync_offset,
            engine: raw
                .get("engine")
                .map(|e| e.trim().to_owned())
                .unwrap_or_else(|| default_engine.to_owned()),
            callback_url,
            label_language,
        };
        if errors.is_empty() {
            Ok(params)
        } else {
            Err(ParamRejection {
                errors,
                duration_mismatch,
            })
        }
    }

    /// The first plan limit these parameters exceed: `(limit name, what was asked, what the plan allows)`.
    pub fn exceeds(&self, plan: &Plan) -> Option<(&'static str, String, String)> {
        if self.min_resolution > plan.max_resolution {
            return Some((
                "max_resolution",
                self.min_resolution.to_string(),
                plan.max_resolution.to_string(),
            ));
        }
        if self.duration > f64::from(plan.max_duration_s) {
            return Some((
                "max_duration_s",
                format!("{:.2}", self.duration),
                plan.max_duration_s.to_string(),
            ));
        }
        if self.inference_steps > plan.max_inference_steps {
            return Some((
                "max_inference_steps",
                self.inference_steps.to_string(),
                plan.max_inference_steps.to_string(),
            ));
        }
        if self.enable_lip_sync_correction && !plan.allow_lip_sync_correction {
            return Some(("allow_lip_sync_correction", "true".into(), "false".into()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawParams {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn field_errors(pairs: &[(&str, &str)]) -> Vec<String> {
        SonicParams::parse(&raw(pairs), 7.56, "builtin")
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults_follow_sonic() {
        let p = SonicParams::parse(&raw(&[]), 7.56, "builtin").unwrap();
        assert_eq!((p.min_resolution, p.inference_steps, p.seed), (512, 25, 0));
        assert_eq!(
            (p.expand_ratio, p.dynamic_scale, p.motion_scale),
            (0.5, 1.0, 1.0)
        );
        assert_eq!(p.duration, 7.56);
        assert!(!p.enable_lip_sync_correction);
        assert_eq!(p.label_language, LabelLanguage::Both);
    }

    #[test]
    fn each_range_is_enforced() {
        assert_eq!(
            field_errors(&[("min_resolution", "100")]),
            ["min_resolution"]
        );
        assert_eq!(
            field_errors(&[("min_resolution", "520")]),
            ["min_resolution"]
        );
        assert_eq!(field_errors(&[("expand_ratio", "1.5")]), ["expand_ratio"]);
        assert_eq!(
            field_errors(&[("inference_steps", "0")]),
            ["inference_steps"]
        );
        assert_eq!(field_errors(&[("dynamic_scale", "NaN")]), ["dynamic_scale"]);
        assert_eq!(field_errors(&[("motion_scale", "2.5")]), ["motion_scale"]);
        assert_eq!(field_errors(&[("seed", "-1")]), ["seed"]);
        assert_eq!(field_errors(&[("seed", "2147483648")]), ["seed"]);
        assert_eq!(
            field_errors(&[("lip_sync_offset", "0.2")]),
            ["lip_sync_offset"]
        );
        assert_eq!(
            field_errors(&[("callback_url", "ftp://x")]),
            ["callback_url"]
        );
        assert_eq!(field_errors(&[("colour", "red")]), ["colour"]);
        assert_eq!(
            field_errors(&[("label_language", "fr")]),
            ["label_language"]
        );
    }

    #[test]
    fn duration_must_match_the_audio_within_a_tenth() {
        assert!(SonicParams::parse(&raw(&[("duration", "7.6")]), 7.56, "b").is_ok());
        for not_a_duration in ["NaN", "nan", "inf", "-infinity"] {
            let rejected =
                SonicParams::parse(&raw(&[("duration", not_a_duration)]), 7.56, "b").unwrap_err();
            assert_eq!(rejected.errors[0].field, "duration", "{not_a_duration}");
        }
        let rejected = SonicParams::parse(&raw(&[("duration", "10")]), 7.56, "b").unwrap_err();
        assert_eq!(rejected.code(), "duration_mismatch");
        let message = &rejected.errors[0].message;
        assert!(
            message.contains("10") && message.contains("7.560"),
            "{message}"
        );
        // Other invalid fields alone are plain validation failures.
        let rejected = SonicParams::parse(&raw(&[("seed", "-1")]), 7.56, "b").unwrap_err();
        assert_eq!(rejected.code(), "validation_failed");
    }

    #[test]
    fn plan_limits_name_the_limit() {
        let p = SonicParams::parse(&raw(&[("min_resolution", "1024")]), 7.56, "b").unwrap();
        assert_eq!(p.exceeds(&Plan::free()).unwrap().0, "max_resolution");
        assert!(p.exceeds(&Plan::pro()).is_none());
        let p =
            SonicParams::parse(&raw(&[("enable_lip_sync_correction", "true")]), 7.56, "b").unwrap();
        assert_eq!(
            p.exceeds(&Plan::free()).unwrap().0,
            "allow_lip_sync_correction"
        );
        let long = SonicParams::parse(&raw(&[]), 31.0, "b").unwrap();
        assert_eq!(long.exceeds(&Plan::free()).unwrap().0, "max_duration_s");
    }
}

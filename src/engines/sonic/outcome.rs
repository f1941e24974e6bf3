//! What a finished ComfyUI prompt means for the job: the output file, or an actionable code.
//! Every failure here is server-side (the quota is given back): the inputs passed intake.

use serde_json::Value;

use super::client::{clip, ComfyError, FileRef, HistoryEntry};

/// Longest failure detail kept from ComfyUI's text (stored with the job and logged).
const MAX_DETAIL: usize = 2000;
use crate::engines::EngineError;

/// The video file a finished prompt produced, or why there is none.
pub fn outcome(entry: &HistoryEntry, output_node: &str) -> Result<FileRef, EngineError> {
    let status = entry.status.clone().unwrap_or_default();
    for (event, data) in &status.messages {
        match event.as_str() {
            "execution_error" => return Err(execution_error(data)),
            "execution_interrupted" => {
                return Err(EngineError::server(
                    "engine_failed",
                    format!(
                        "ComfyUI interrupted the prompt at node {} ({})",
                        data["node_id"].as_str().unwrap_or("?"),
                        data["node_type"].as_str().unwrap_or("?")
                    ),
                ))
            }
            _ => {}
        }
    }
    if status.status_str != "success" {
        return Err(EngineError::server(
            "engine_failed",
            format!(
                "ComfyUI finished the prompt with status {:?} and no error message",
                status.status_str
            ),
        ));
    }
    video_file(entry.outputs.get(output_node)).ok_or_else(|| {
        EngineError::server(
            "engine_failed",
            format!(
                "ComfyUI reported success but node {output_node} named no video file: {}",
                entry
                    .outputs
                    .get(output_node)
                    .map_or("no output".to_owned(), |v| clip(&v.to_string(), 500))
            ),
        )
    })
}

/// The first file of a SaveVideo (`images`) or VideoHelperSuite (`gifs`) output.
fn video_file(output: Option<&Value>) -> Option<FileRef> {
    let output = output?;
    ["images", "gifs", "videos"].iter().find_map(|key| {
        output[*key]
            .as_array()?
            .first()
            .and_then(|file| serde_json::from_value(file.clone()).ok())
    })
}

/// An `execution_error` event: out of memory (the user can lower min_resolution), or anything
/// else with ComfyUI's exception type.
pub fn execution_error(data: &Value) -> EngineError {
    let kind = data["exception_type"].as_str().unwrap_or("unknown");
    // ComfyUI appends advice on further lines (for out of memory): one line for the log.
    let message = data["exception_message"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.as_str();
    let node = format!(
        "node {} ({})",
        data["node_id"].as_str().unwrap_or("?"),
        data["node_type"].as_str().unwrap_or("?")
    );
    let detail = clip(&format!("{kind} in {node}: {message}"), MAX_DETAIL);
    if is_out_of_memory(kind, message) {
        EngineError::server("gpu_out_of_memory", detail)
    } else {
        EngineError::server("engine_failed", detail)
    }
}

/// torch's `OutOfMemoryError` (torch 2.x and `torch.cuda`), or an older RuntimeError whose text is
/// CUDA's "out of memory".
fn is_out_of_memory(kind: &str, message: &str) -> bool {
    kind.ends_with("OutOfMemoryError") || message.to_ascii_lowercase().contains("out of memory")
}

/// A failed call to ComfyUI as the job's error.
pub fn call_error(err: ComfyError) -> EngineError {
    let code = match &err {
        ComfyError::Unreachable { .. } | ComfyError::Lost { .. } => "engine_unavailable",
        ComfyError::Rejected { .. } => "engine_rejected_workflow",
        ComfyError::Status { .. } | ComfyError::Protocol { .. } => "engine_failed",
    };
    EngineError::server(code, err.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engines::sonic::client::HistoryStatus;

    fn entry(status: &str, messages: Vec<(String, Value)>, outputs: Value) -> HistoryEntry {
        HistoryEntry {
            outputs: serde_json::from_value(outputs).unwrap(),
            status: Some(HistoryStatus {
                status_str: status.into(),
                completed: status == "success",
                messages,
            }),
        }
    }

    #[test]
    fn saved_video_is_found_in_the_output_node() {
        let done = entry(
            "success",
            vec![("execution_success".into(), json!({}))],
            json!({"8": {"images": [{"filename": "sonicgw_00001_.mp4", "subfolder": "video",
                                     "type": "output"}], "animated": [true]}}),
        );
        let file = outcome(&done, "8").unwrap();
        assert_eq!(
            (
                file.filename.as_str(),
                file.subfolder.as_str(),
                file.kind.as_str()
            ),
            ("sonicgw_00001_.mp4", "video", "output")
        );
        let vhs = entry(
            "success",
            vec![],
            json!({"8": {"gifs": [{"filename": "s.mp4", "subfolder": "", "type": "output",
                                   "format": "video/h264-mp4"}]}}),
        );
        assert_eq!(outcome(&vhs, "8").unwrap().filename, "s.mp4");
        let empty = entry("success", vec![], json!({}));
        assert_eq!(outcome(&empty, "8").unwrap_err().code, "engine_failed");
    }

    #[test]
    fn cuda_out_of_memory_asks_for_a_lower_resolution() {
        let oom = entry(
            "error",
            vec![(
                "execution_error".into(),
                json!({"node_id": "6", "node_type": "SONICSampler",
                       "exception_type": "torch.OutOfMemoryError",
                       "exception_message": "CUDA out of memory. Tried to allocate 20.00 GiB.",
                       "traceback": ["..."]}),
            )],
            json!({}),
        );
        let err = outcome(&oom, "8").unwrap_err();
        assert_eq!(err.code, "gpu_out_of_memory");
        assert!(err.server_side);
        assert!(err.message.contains("min_resolution"), "{}", err.message);
        assert!(err.detail.contains("SONICSampler"), "{}", err.detail);
        let old_torch = execution_error(&json!({"exception_type": "RuntimeError",
            "exception_message": "CUDA error: out of memory"}));
        assert_eq!(old_torch.code, "gpu_out_of_memory");
        // ComfyUI appends advice on further lines; the detail stays one log line.
        let advised = execution_error(&json!({"exception_type": "torch.OutOfMemoryError",
            "exception_message": "Allocation on device \nThis error means you ran out of memory on your GPU.\n\nTIPS: ..."}));
        assert!(!advised.detail.contains('\n'), "{}", advised.detail);
        assert!(
            advised.detail.contains("device This error means"),
            "{}",
            advised.detail
        );
    }

    #[test]
    fn other_exceptions_fail_with_their_type_in_the_detail() {
        let err = execution_error(&json!({"node_id": "5", "node_type": "SONIC_PreData",
            "exception_type": "IndexError", "exception_message": "list index out of range"}));
        assert_eq!(err.code, "engine_failed");
        assert!(err.server_side);
        assert!(err.detail.contains("IndexError"), "{}", err.detail);
        assert!(!err.message.contains('\n') && !err.message.contains("IndexError"));
        let interrupted = entry(
            "error",
            vec![("execution_interrupted".into(), json!({"node_id": "6"}))],
            json!({}),
        );
        assert_eq!(
            outcome(&interrupted, "8").unwrap_err().code,
            "engine_failed"
        );
    }

    #[test]
    fn call_failures_map_to_unavailable_rejected_or_failed() {
        let down = call_error(ComfyError::Unreachable {
            url: "http://gpu1:8188/".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(down.code, "engine_unavailable");
        let rejected = call_error(ComfyError::Rejected {
            summary: "node 5 (SONIC_PreData) input \"duration\": Required input is missing".into(),
        });
        assert_eq!(rejected.code, "engine_rejected_workflow");
        assert!(rejected.detail.contains("SONIC_PreData"));
        let odd = call_error(ComfyError::Status {
            what: "history",
            status: 500,
            body: String::new(),
        });
        assert_eq!(odd.code, "engine_failed");
        for err in [down, rejected, odd] {
            assert!(err.server_side);
            assert!(!err.message.contains('\n'));
        }
    }
}

//! ComfyUI's websocket (`GET /ws?clientId=`): the JSON messages it sends, typed, and the socket as
//! a stream of them. Execution events go only to the client id a prompt was submitted with.

use std::time::Duration;

use base64::Engine as _;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::client::{ComfyClient, ComfyError};

/// Connecting and the upgrade handshake together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message kept: execution events are small; larger ones are preview images.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The socket's messages, until it closes or fails.
pub type EventStream = BoxStream<'static, ComfyEvent>;

/// One message of ComfyUI's websocket.
#[derive(Debug, Clone, PartialEq)]
pub enum ComfyEvent {
    /// The queue changed (also sent once on connect, with our `sid`).
    Status {
        queue_remaining: Option<u64>,
    },
    ExecutionStart {
        prompt_id: String,
    },
    /// Nodes whose outputs were reused from an earlier prompt: they will not run.
    ExecutionCached {
        prompt_id: String,
        nodes: Vec<String>,
    },
    /// A node starts; `node: None` means the prompt finished (its history is written).
    Executing {
        prompt_id: Option<String>,
        node: Option<String>,
    },
    Progress {
        prompt_id: Option<String>,
        node: Option<String>,
        value: u64,
        max: u64,
    },
    Executed {
        prompt_id: String,
        node: String,
        output: Value,
    },
    ExecutionSuccess {
        prompt_id: String,
    },
    /// ComfyUI's data as sent (`exception_message`, `exception_type`, `traceback`, `node_id`, ...).
    ExecutionError {
        prompt_id: String,
        data: Value,
    },
    ExecutionInterrupted {
        prompt_id: String,
        data: Value,
    },
    /// A type this client does not use (`progress_state`, `executed` of previews, custom nodes').
    Other {
        kind: String,
    },
}

impl ComfyEvent {
    /// Parses one text message; `None` when it is not `{"type": ..., "data": {...}}`, or is a
    /// known type whose data lacks what identifies it.
    pub fn parse(text: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            data: Value,
        }
        let Raw { kind, data } = serde_json::from_str(text).ok()?;
        let text_of = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
        let prompt_id = || text_of("prompt_id");
        Some(match kind.as_str() {
            "status" => ComfyEvent::Status {
                queue_remaining: data
                    .pointer("/status/exec_info/queue_remaining")
                    .and_then(Value::as_u64),
            },
            "execution_start" => ComfyEvent::ExecutionStart {
                prompt_id: prompt_id()?,
            },
            "execution_cached" => ComfyEvent::ExecutionCached {
                prompt_id: prompt_id()?,
                nodes: data["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
            },
            "executing" => ComfyEvent::Executing {
                prompt_id: prompt_id(),
                node: text_of("node"),
            },
            "progress" => ComfyEvent::Progress {
                prompt_id: prompt_id(),
                node: text_of("node"),
                value: data["value"].as_u64()?,
                max: data["max"].as_u64()?,
            },
            "executed" => ComfyEvent::Executed {
                prompt_id: prompt_id()?,
                node: text_of("node")?,
                output: data["output"].clone(),
            },
            "execution_success" => ComfyEvent::ExecutionSuccess {
                prompt_id: prompt_id()?,
            },
            "execution_error" => ComfyEvent::ExecutionError {
                prompt_id: prompt_id()?,
                data,
            },
            "execution_interrupted" => ComfyEvent::ExecutionInterrupted {
                prompt_id: prompt_id()?,
                data,
            },
            _ => ComfyEvent::Other { kind },
        })
    }

    /// The prompt this event is about, if it names one.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            ComfyEvent::ExecutionStart { prompt_id }
            | ComfyEvent::ExecutionCached { prompt_id, .. }
            | ComfyEvent::Executed { prompt_id, .. }
            | ComfyEvent::ExecutionSuccess { prompt_id }
            | ComfyEvent::ExecutionError { prompt_id, .. }
            | ComfyEvent::ExecutionInterrupted { prompt_id, .. } => Some(prompt_id),
            ComfyEvent::Executing { prompt_id, .. } | ComfyEvent::Progress { prompt_id, .. } => {
                prompt_id.as_deref()
            }
            ComfyEvent::Status { .. } | ComfyEvent::Other { .. } => None,
        }
    }

    /// Whether the prompt has ended with this event (successfully or not).
    pub fn ends_prompt(&self) -> bool {
        matches!(
            self,
            ComfyEvent::ExecutionSuccess { .. }
                | ComfyEvent::ExecutionError { .. }
                | ComfyEvent::ExecutionInterrupted { .. }
                | ComfyEvent::Executing { node: None, .. }
        )
    }
}

impl ComfyClient {
    /// Opens the websocket as `client_id` (ws:// or wss:// after the base URL, with the configured
    /// headers; no redirects, no proxy). The stream ends when the socket closes or fails; binary
    /// frames (previews) and unparsable messages are skipped.
    pub async fn events(&self, client_id: &str) -> Result<EventStream, ComfyError> {
        let unreachable = |reason: String| ComfyError::Unreachable {
            url: crate::config::redacted_url(self.base().as_str()),
            reason,
        };
        let request = self.websocket_request(client_id).map_err(unreachable)?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, None);
        let (socket, _) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable("the websocket handshake timed out".to_owned()))?
            .map_err(|e| unreachable(websocket_error(&e)))?;
        let events = socket
            .take_while(|message| std::future::ready(message.is_ok()))
            .filter_map(|message| {
                std::future::ready(match message {
                    Ok(Message::Text(text)) => ComfyEvent::parse(text.as_str()),
                    _ => None,
                })
            });
        Ok(events.boxed())
    }

    /// The upgrade request: `ws(s)://<base>/ws?clientId=`, the configured headers (sensitive), and
    /// the base URL's credentials as Basic authorization, as reqwest sends them on other calls.
    fn websocket_request(
        &self,
        client_id: &str,
    ) -> Result<tungstenite::handshake::client::Request, String> {
        let mut url = self.base().join("ws").expect("relative API paths join");
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| "cannot make a websocket URL".to_owned())?;
        url.query_pairs_mut()
            .clear()
            .append_pair("clientId", client_id);
        let credentials = (!url.username().is_empty()).then(|| {
            let user = percent_decode(url.username());
            let password = url.password().map(percent_decode).unwrap_or_default();
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| websocket_error(&e))?;
        let headers = request.headers_mut();
        if let Some(credentials) = credentials {
            let mut value = HeaderValue::from_str(&format!("Basic {credentials}"))
                .map_err(|_| "the URL's credentials are not a valid header".to_owned())?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        for (name, value) in self.headers() {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }
}

/// `%XX` escapes of a URL's user or password decoded (nothing else is special there).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A handshake failure, without the URL (the base may hold credentials).
fn websocket_error(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => {
            format!("the websocket upgrade was answered {}", response.status())
        }
        other => format!("websocket: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn events_parse_from_comfyuis_real_messages() {
        let status = r#"{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 2}}, "sid": "sonicgw-1"}}"#;
        assert_eq!(
            ComfyEvent::parse(status),
            Some(ComfyEvent::Status {
                queue_remaining: Some(2)
            })
        );
        let start = r#"{"type": "execution_start", "data": {"prompt_id": "p1", "timestamp": 1735689600000}}"#;
        assert_eq!(
            ComfyEvent::parse(start),
            Some(ComfyEvent::ExecutionStart {
                prompt_id: "p1".into()
            })
        );
        let cached = r#"{"type": "execution_cached", "data": {"nodes": ["1", "2"], "prompt_id": "p1", "timestamp": 1}}"#;
        assert_eq!(
            ComfyEvent::parse(cached),
            Some(ComfyEvent::ExecutionCached {
                prompt_id: "p1".into(),
                nodes: vec!["1".into(), "2".into()]
            })
        );
        let executing = r#"{"type": "executing", "data": {"node": "6", "display_node": "6", "prompt_id": "p1"}}"#;
        let executing = ComfyEvent::parse(executing).unwrap();
        assert_eq!(
            executing,
            ComfyEvent::Executing {
                prompt_id: Some("p1".into()),
                node: Some("6".into())
            }
        );
        assert!(!executing.ends_prompt());
        let done = r#"{"type": "executing", "data": {"node": null, "prompt_id": "p1"}}"#;
        let done = ComfyEvent::parse(done).unwrap();
        assert!(done.ends_prompt());
        assert_eq!(done.prompt_id(), Some("p1"));
        let progress = r#"{"type": "progress", "data": {"value": 3, "max": 25, "prompt_id": "p1", "node": "6"}}"#;
        assert_eq!(
            ComfyEvent::parse(progress),
            Some(ComfyEvent::Progress {
                prompt_id: Some("p1".into()),
                node: Some("6".into()),
                value: 3,
                max: 25
            })
        );
        let executed = r#"{"type": "executed", "data": {"node": "8", "display_node": "8", "output": {"images": [{"filename": "sonicgw_00001_.mp4", "subfolder": "video", "type": "output"}], "animated": [true]}, "prompt_id": "p1"}}"#;
        let ComfyEvent::Executed { node, output, .. } = ComfyEvent::parse(executed).unwrap() else {
            panic!("executed");
        };
        assert_eq!(node, "8");
        assert_eq!(output["images"][0]["filename"], "sonicgw_00001_.mp4");
        let success =
            r#"{"type": "execution_success", "data": {"prompt_id": "p1", "timestamp": 2}}"#;
        assert!(ComfyEvent::parse(success).unwrap().ends_prompt());
    }

    #[test]
    fn failures_keep_comfyuis_data_and_end_the_prompt() {
        let error = json!({"type": "execution_error", "data": {"prompt_id": "p1", "node_id": "6",
            "node_type": "SONICSampler", "executed": ["1"], "exception_message": "CUDA out of memory.",
            "exception_type": "torch.OutOfMemoryError", "traceback": ["..."],
            "current_inputs": {}, "current_outputs": {}, "timestamp": 3}});
        let event = ComfyEvent::parse(&error.to_string()).unwrap();
        assert!(event.ends_prompt());
        let ComfyEvent::ExecutionError { data, .. } = event else {
            panic!("execution_error");
        };
        assert_eq!(data["exception_type"], "torch.OutOfMemoryError");
        let interrupted = r#"{"type": "execution_interrupted", "data": {"prompt_id": "p1", "node_id": "6", "node_type": "SONICSampler", "executed": [], "timestamp": 4}}"#;
        assert!(ComfyEvent::parse(interrupted).unwrap().ends_prompt());
    }

    #[test]
    fn unknown_types_are_kept_and_malformed_messages_dropped() {
        let state = r#"{"type": "progress_state", "data": {"prompt_id": "p1", "nodes": {}}}"#;
        assert_eq!(
            ComfyEvent::parse(state),
            Some(ComfyEvent::Other {
                kind: "progress_state".into()
            })
        );
        assert_eq!(ComfyEvent::parse("not json"), None);
        assert_eq!(ComfyEvent::parse(r#"{"data": {}}"#), None);
        // A known type without its prompt id cannot be attributed.
        assert_eq!(
            ComfyEvent::parse(r#"{"type": "execution_success", "data": {}}"#),
            None
        );
    }

    #[test]
    fn websocket_request_follows_the_base_url_with_the_configured_headers() {
        let headers = BTreeMap::from([("X-Proxy-Token".to_owned(), "t0k3n".to_owned())]);
        let client = ComfyClient::new("https://proxy.internal/comfy", &headers).unwrap();
        let request = client.websocket_request("sonicgw-1").unwrap();
        assert_eq!(
            request.uri().to_string(),
            "wss://proxy.internal/comfy/ws?clientId=sonicgw-1"
        );
        let token = &request.headers()["x-proxy-token"];
        assert_eq!(token, "t0k3n");
        assert!(token.is_sensitive());
        let plain = ComfyClient::new("http://user:p%40ss@gpu1:8188", &BTreeMap::new()).unwrap();
        let request = plain.websocket_request("c").unwrap();
        assert_eq!(request.uri().to_string(), "ws://gpu1:8188/ws?clientId=c");
        let basic = &request.headers()[AUTHORIZATION];
        assert_eq!(
            basic,
            &format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:p@ss")
            )
        );
        assert!(basic.is_sensitive());
    }
}

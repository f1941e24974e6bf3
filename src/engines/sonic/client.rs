//! An HTTP client for one ComfyUI server: the calls the `sonic` engine makes, with ComfyUI's JSON
//! shapes. It holds no job state, so a pool of instances can wrap one client per server.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Short calls (prompt, history, queue, interrupt, stats).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Uploads and downloads of media.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of an error body is kept for the log.
const BODY_TAIL: usize = 2000;
/// Largest JSON answer read (stats, node definitions, history, queue): a hostile or broken server
/// must not make the gateway buffer gigabytes.
const MAX_JSON_BYTES: usize = 8 * 1024 * 1024;

/// Why a call to ComfyUI failed.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// Nothing answered (refused, reset, timed out), or a proxy in front said the server is down.
    #[error("ComfyUI at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// `POST /prompt` refused the workflow (400 with `error` and `node_errors`).
    #[error("ComfyUI refused the workflow: {summary}")]
    Rejected { summary: String },
    /// Another unexpected HTTP status.
    #[error("ComfyUI {what} answered {status}: {body}")]
    Status {
        what: &'static str,
        status: u16,
        body: String,
    },
    /// The server no longer knows a prompt it accepted (it restarted).
    #[error(
        "ComfyUI lost prompt {prompt_id}: neither queued, running nor in its history (restarted?)"
    )]
    Lost { prompt_id: String },
    /// An answer we cannot use (not the documented JSON, a file too large).
    #[error("ComfyUI {what}: {reason}")]
    Protocol { what: &'static str, reason: String },
}

/// A file in one of ComfyUI's folders, as `/upload/image` and history outputs name it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileRef {
    #[serde(alias = "name")]
    pub filename: String,
    #[serde(default)]
    pub subfolder: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl FileRef {
    /// How a loader node's input names an uploaded file: `subfolder/name`, or the name alone.
    pub fn input_name(&self) -> String {
        if self.subfolder.is_empty() {
            self.filename.clone()
        } else {
            format!("{}/{}", self.subfolder, self.filename)
        }
    }
}

/// One `/history/{id}` entry: present once the prompt finished (successfully or not).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HistoryEntry {
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    #[serde(default)]
    pub status: Option<HistoryStatus>,
}

/// How a prompt ended.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HistoryStatus {
    #[serde(default)]
    pub status_str: String,
    #[serde(default)]
    pub completed: bool,
    /// `[event, data]` pairs: execution_start, execution_cached, execution_error, ...
    #[serde(default)]
    pub messages: Vec<(String, Value)>,
}

/// `GET /queue`: prompt ids running and waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueState {
    pub running: Vec<String>,
    pub pending: Vec<String>,
}

/// A client for one ComfyUI base URL.
#[derive(Clone)]
pub struct ComfyClient {
    base: url::Url,
    http: reqwest::Client,
    /// The configured headers (sensitive), also sent on the websocket upgrade.
    headers: HeaderMap,
}

impl std::fmt::Debug for ComfyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComfyClient")
            .field("base", &crate::config::redacted_url(self.base.as_str()))
            .finish_non_exhaustive()
    }
}

impl ComfyClient {
    /// A client for `base` (http or https) sending `headers` (e.g. a reverse proxy's token) on
    /// every request. Redirects are not followed: ComfyUI does not send them, and a redirect
    /// would carry those headers elsewhere.
    pub fn new(base: &str, headers: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut base =
            url::Url::parse(base).map_err(|e| format!("comfyui url {base:?} is invalid: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!(
                "comfyui url {} must be http(s)://host[:port]",
                crate::config::redacted_url(base.as_str())
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("comfyui_headers: {name:?} is not a header name"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("comfyui_headers: the value of {name} is not valid"))?;
            value.set_sensitive(true);
            header_map.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(header_map.clone())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self {
            base,
            http,
            headers: header_map,
        })
    }

    /// The configured headers, marked sensitive.
    pub(super) fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The server's base URL (operators' eyes only: it may name a private host).
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    fn url(&self, path: &str) -> url::Url {
        self.base.join(path).expect("relative API paths join")
    }

    fn unreachable(&self, err: &reqwest::Error) -> ComfyError {
        ComfyError::Unreachable {
            url: crate::config::redacted_url(self.base.as_str()),
            reason: without_url(err),
        }
    }

    /// Sends a request and returns the successful response; statuses a proxy uses for a down
    /// backend (502, 503, 504) count as unreachable.
    async fn send(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ComfyError> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if matches!(status.as_u16(), 502..=504) {
            return Err(ComfyError::Unreachable {
                url: crate::config::redacted_url(self.base.as_str()),
                reason: format!("{what} answered {status}"),
            });
        }
        Err(ComfyError::Status {
            what,
            status: status.as_u16(),
            body: body_tail(response).await,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        what: &'static str,
        response: reqwest::Response,
    ) -> Result<T, ComfyError> {
        let bytes = read_capped(response, MAX_JSON_BYTES)
            .await
            .map_err(|reason| ComfyError::Protocol { what, reason })?;
        serde_json::from_slice(&bytes).map_err(|e| ComfyError::Protocol {
            what,
            reason: format!("unexpected answer: {e}"),
        })
    }

    /// `POST /upload/image` (type input, overwrite): stores `bytes` under `name` in ComfyUI's
    /// input folder and returns the name it was stored under.
    pub async fn upload(
        &self,
        name: &str,
        bytes: Vec<u8>,
        mime: &str,
    ) -> Result<FileRef, ComfyError> {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str(mime)
            .map_err(|e| ComfyError::Protocol {
                what: "upload",
                reason: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", "input")
            .text("overwrite", "true");
        let request = self
            .http
            .post(self.url("upload/image"))
            .timeout(TRANSFER_TIMEOUT)
            .multipart(form);
        let response = self.send("upload", request).await?;
        Self::json("upload", response).await
    }

    /// `POST /prompt` with our own `prompt_id`, so the prompt can be found (or cancelled) even
    /// when this answer is lost. Returns ComfyUI's queue number.
    pub async fn submit(
        &self,
        prompt: &Value,
        client_id: &str,
        prompt_id: &str,
    ) -> Result<u64, ComfyError> {
        let body = json!({"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id});
        let response = self
            .http
            .post(self.url("prompt"))
            .timeout(CALL_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status == reqwest::StatusCode::BAD_REQUEST {
            let body: Value = Self::json("prompt", response).await?;
            return Err(ComfyError::Rejected {
                summary: rejection_summary(&body),
            });
        }
        if !status.is_success() {
            if matches!(status.as_u16(), 502..=504) {
                return Err(ComfyError::Unreachable {
                    url: crate::config::redacted_url(self.base.as_str()),
                    reason: format!("prompt answered {status}"),
                });
            }
            return Err(ComfyError::Status {
                what: "prompt",
                status: status.as_u16(),
                body: body_tail(response).await,
            });
        }
        #[derive(Deserialize)]
        struct Queued {
            prompt_id: String,
            #[serde(default)]
            number: u64,
        }
        let queued: Queued = Self::json("prompt", response).await?;
        if queued.prompt_id != prompt_id {
            return Err(ComfyError::Protocol {
                what: "prompt",
                reason: format!(
                    "asked for prompt id {prompt_id}, got {} (ComfyUI too old to take a client's id?)",
                    clip(&queued.prompt_id, 100)
                ),
            });
        }
        Ok(queued.number)
    }

    /// `GET /history/{id}`: `None` while the prompt has not finished.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        let request = self
            .http
            .get(self.url(&format!("history/{prompt_id}")))
            .timeout(CALL_TIMEOUT);
        let response = self.send("history", request).await?;
        let mut all: BTreeMap<String, HistoryEntry> = Self::json("history", response).await?;
        Ok(all.remove(prompt_id))
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueState, ComfyError> {
        let request = self.http.get(self.url("queue")).timeout(CALL_TIMEOUT);
        let response = self.send("queue", request).await?;
        let raw: Value = Self::json("queue", response).await?;
        // Each queue item is [number, prompt_id, prompt, extra_data, outputs_to_execute].
        let ids = |key: &str| -> Vec<String> {
            raw[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| item.get(1).and_then(Value::as_str).map(str::to_owned))
                .collect()
        };
        Ok(QueueState {
            running: ids("queue_running"),
            pending: ids("queue_pending"),
        })
    }

    /// `POST /queue {"delete":[id]}`: removes a prompt that has not started (a no-op otherwise).
    pub async fn delete_pending(&self, prompt_id: &str) -> Result<(), ComfyError> {
        let request = self
            .http
            .post(self.url("queue"))
            .timeout(CALL_TIMEOUT)
            .json(&json!({"delete": [prompt_id]}));
        self.send("queue delete", request).await.map(drop)
    }

    /// `POST /interrupt {"prompt_id"}`: stops that prompt if it is the one running (a no-op
    /// otherwise). Takes effect when the running node next checks, between nodes for Sonic.
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        let request = self
            .http
            .post(self.url("interrupt"))
            .timeout(CALL_TIMEOUT)
            .json(&json!({"prompt_id": prompt_id}));
        self.send("interrupt", request).await.map(drop)
    }

    /// `GET /system_stats`: the ComfyUI version and devices.
    pub async fn system_stats(&self) -> Result<Value, ComfyError> {
        let request = self
            .http
            .get(self.url("system_stats"))
            .timeout(CALL_TIMEOUT);
        let response = self.send("system_stats", request).await?;
        Self::json("system_stats", response).await
    }

    /// `GET /object_info/{class}`: the node's definition, `None` when it is not installed.
    pub async fn object_info(&self, class: &str) -> Result<Option<Value>, ComfyError> {
        let request = self
            .http
            .get(self.url(&format!("object_info/{class}")))
            .timeout(CALL_TIMEOUT);
        let response = self.send("object_info", request).await?;
        let mut all: BTreeMap<String, Value> = Self::json("object_info", response).await?;
        Ok(all.remove(class))
    }

    /// `GET /view` of an output file, streamed to `path`; refused past `max_bytes`.
    pub async fn download(
        &self,
        file: &FileRef,
        path: &Path,
        max_bytes: u64,
    ) -> Result<u64, ComfyError> {
        let request = self
            .http
            .get(self.url("view"))
            .query(&[
                ("filename", file.filename.as_str()),
                ("subfolder", file.subfolder.as_str()),
                ("type", file.kind.as_str()),
            ])
            .timeout(TRANSFER_TIMEOUT);
        let response = self.send("view", request).await?;
        let io = |e: std::io::Error| ComfyError::Protocol {
            what: "view",
            reason: format!("writing the result: {e}"),
        };
        let mut out = tokio::fs::File::create(path).await.map_err(io)?;
        let mut written = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(&e))?;
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(ComfyError::Protocol {
                    what: "view",
                    reason: format!("the result is larger than {max_bytes} bytes"),
                });
            }
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        Ok(written)
    }
}

/// One line naming what ComfyUI refused: its error message, then each node's class, id and
/// errors with the input they concern.
pub fn rejection_summary(body: &Value) -> String {
    let mut parts = Vec::new();
    let error = &body["error"];
    if let Some(message) = error["message"].as_str() {
        let details = error["details"].as_str().unwrap_or_default();
        parts.push(if details.is_empty() {
            message.to_owned()
        } else {
            format!("{message} ({details})")
        });
    }
    if let Some(nodes) = body["node_errors"].as_object() {
        for (id, node) in nodes {
            let class = node["class_type"].as_str().unwrap_or("?");
            for err in node["errors"].as_array().into_iter().flatten() {
                let input = err["extra_info"]["input_name"]
                    .as_str()
                    .or_else(|| err["details"].as_str())
                    .unwrap_or("");
                let message = err["message"].as_str().unwrap_or("invalid");
                let details = err["details"].as_str().unwrap_or("");
                parts.push(format!(
                    "node {id} ({class}) input {input:?}: {message}{}",
                    if details.is_empty() || details == input {
                        String::new()
                    } else {
                        format!(": {details}")
                    }
                ));
            }
        }
    }
    if parts.is_empty() {
        parts.push(format!("400 {}", truncate(&body.to_string())));
    }
    clip(&parts.join("; "), BODY_TAIL)
}

/// reqwest's error without the URL it carries (the query of `/view` is ours, but the base may
/// hold credentials).
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<comfyui>");
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads at most `max` bytes of a body; more is an error (the rest is never read).
async fn read_capped(response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| without_url(&e))?;
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error body, for the log: reading stops after `BODY_TAIL` bytes.
async fn body_tail(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= BODY_TAIL {
            break;
        }
    }
    truncate(&String::from_utf8_lossy(&body))
}

/// Text a ComfyUI server sent, made safe to store, log and show: one line without control
/// characters, at most `max` bytes (cut on a character boundary, marked with an ellipsis).
pub fn clip(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(BODY_TAIL);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_names_node_class_and_input() {
        let body = json!({
            "error": {"type": "prompt_outputs_failed_validation",
                      "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"2": {"errors": [{"type": "value_not_in_list",
                "message": "Value not in list", "details": "sonic_unet: 'unet.pth' not in ['none']",
                "extra_info": {"input_name": "sonic_unet"}}],
                "dependent_outputs": ["8"], "class_type": "SONICTLoader"}}
        });
        let summary = rejection_summary(&body);
        assert!(
            summary.starts_with("Prompt outputs failed validation"),
            "{summary}"
        );
        assert!(
            summary.contains("node 2 (SONICTLoader) input \"sonic_unet\": Value not in list"),
            "{summary}"
        );
        assert!(!summary.contains('\n'));
    }

    #[test]
    fn rejection_of_a_missing_node_type_keeps_comfyuis_message() {
        let body = json!({
            "error": {"type": "invalid_prompt",
                      "message": "Cannot execute because node SONICSampler does not exist.",
                      "details": "Node ID '#6'", "extra_info": {}},
            "node_errors": {}
        });
        assert_eq!(
            rejection_summary(&body),
            "Cannot execute because node SONICSampler does not exist. (Node ID '#6')"
        );
    }

    #[test]
    fn uploaded_names_in_a_subfolder_are_addressed_with_it() {
        let plain: FileRef =
            serde_json::from_value(json!({"name": "a.png", "subfolder": "", "type": "input"}))
                .unwrap();
        assert_eq!(plain.input_name(), "a.png");
        let nested: FileRef =
            serde_json::from_value(json!({"name": "a.png", "subfolder": "gw", "type": "input"}))
                .unwrap();
        assert_eq!(nested.input_name(), "gw/a.png");
    }

    #[test]
    fn bases_must_be_http_and_headers_valid() {
        let none = BTreeMap::new();
        assert!(ComfyClient::new("http://gpu1:8188", &none).is_ok());
        assert!(ComfyClient::new("file:///etc/passwd", &none).is_err());
        assert!(ComfyClient::new("not a url", &none).is_err());
        let bad = BTreeMap::from([("bad header".to_owned(), "x".to_owned())]);
        assert!(ComfyClient::new("http://gpu1:8188", &bad).is_err());
        let client = ComfyClient::new("https://proxy.internal/comfy", &none).unwrap();
        assert_eq!(
            client.url("prompt").as_str(),
            "https://proxy.internal/comfy/prompt"
        );
    }
}

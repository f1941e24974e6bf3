//! This thread's log, captured as the JSON lines `log_format = "json"` writes, to check what spans and
//! events record. A test's server runs on the test's own current-thread runtime, so a thread-local
//! subscriber sees everything the server does for that test and nothing of the others.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::format::FmtSpan;

/// Captures `sonicgw`'s events, and each span as it closes, until dropped.
pub struct Traces {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: DefaultGuard,
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Traces {
    pub fn capture() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("sonicgw=debug")
            .with_span_events(FmtSpan::CLOSE)
            .with_writer(move || Writer(Arc::clone(&writer)))
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.buffer.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The events logged with this message.
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["fields"]["message"] == message)
            .collect()
    }

    /// The first event logged with this message.
    pub fn event(&self, message: &str) -> Value {
        self.events(message)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no event {message:?} in\n{}", self.text()))
    }

    /// The closing of each span with this name: `span` holds its fields, `spans` its parents and itself.
    pub fn closed(&self, name: &str) -> Vec<Value> {
        self.events("close")
            .into_iter()
            .filter(|line| line["span"]["name"] == name)
            .collect()
    }

    /// Waits up to `within` for an event with this message.
    pub async fn wait_for(&self, message: &str, within: Duration) -> Value {
        self.wait(within, || self.events(message).into_iter().next())
            .await
    }

    /// Waits up to `within` for a span with this name to close with `field` equal to `value`.
    pub async fn wait_closed(
        &self,
        name: &str,
        field: &str,
        value: &Value,
        within: Duration,
    ) -> Value {
        self.wait(within, || {
            self.closed(name)
                .into_iter()
                .find(|line| &line["span"][field] == value)
        })
        .await
    }

    async fn wait(&self, within: Duration, found: impl Fn() -> Option<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(line) = found() {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not logged within {within:?}:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The span named `name` among those an event (or a closing) was logged in.
pub fn span<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == name))
        .unwrap_or_else(|| panic!("no span {name:?} in {line}"))
}

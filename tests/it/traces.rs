//! The log, captured as the JSON lines `log_format = "json"` writes, to check what spans and events
//! record. One global subscriber with a static filter writes every line to each live capture,
//! whatever thread logs it. (A subscriber per test thread lost lines: a span can close on another
//! thread, as sqlx's SQLite worker drops the span handles it is given, and tracing's per-callsite
//! interest cache races between scoped or dynamically filtered subscribers.) Other tests run at the
//! same time, so a test picks its own lines by something unique to it (a request id, a job or
//! message id, a user).

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use serde_json::Value;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

type Buffer = Arc<Mutex<Vec<u8>>>;

/// The live captures.
static CAPTURES: Mutex<Vec<Buffer>> = Mutex::new(Vec::new());

/// Captures `sonicgw`'s events, and each span as it closes, until dropped.
pub struct Traces {
    buffer: Arc<Mutex<Vec<u8>>>,
    /// The lines parsed so far and how many bytes of the buffer they took (tests poll often).
    parsed: Mutex<(usize, Vec<Value>)>,
}

/// Appends each line to every live capture.
struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for buffer in CAPTURES.lock().unwrap().iter() {
            buffer.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_once() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // A static filter: every callsite's interest is fixed, whichever thread meets it first.
        let filter = Targets::new().with_target("sonicgw", tracing::Level::INFO);
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_span_events(FmtSpan::CLOSE)
            .with_writer(|| CaptureWriter)
            .with_filter(filter);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in the test binary");
    });
}

impl Traces {
    pub fn capture() -> Self {
        install_once();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURES.lock().unwrap().push(Arc::clone(&buffer));
        Self {
            buffer,
            parsed: Mutex::default(),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.buffer.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<Value> {
        let mut parsed = self.parsed.lock().unwrap();
        let buffer = self.buffer.lock().unwrap();
        let fresh = &buffer[parsed.0..];
        if let Some(end) = fresh.iter().rposition(|b| *b == b'\n') {
            let text = std::str::from_utf8(&fresh[..=end]).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            parsed.0 += end + 1;
            parsed.1.extend(lines);
        }
        parsed.1.clone()
    }

    /// The events logged with this message.
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| line["fields"]["message"] == message)
            .collect()
    }

    /// The events logged with this message that `mine` picks out.
    pub fn events_where(&self, message: &str, mine: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.events(message)
            .into_iter()
            .filter(|l| mine(l))
            .collect()
    }

    /// The first event with this message that `mine` picks out.
    pub fn event_where(&self, message: &str, mine: impl Fn(&Value) -> bool) -> Value {
        self.events_where(message, mine)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no event {message:?} of this test in\n{}", self.text()))
    }

    /// Waits up to `within` for a span with this name to close in a way `mine` picks out.
    pub async fn wait_closed_where(
        &self,
        name: &str,
        mine: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        self.wait(within, || self.closed(name).into_iter().find(|l| mine(l)))
            .await
    }

    /// Waits up to `within` for an event with this message that `mine` picks out.
    pub async fn wait_for_where(
        &self,
        message: &str,
        mine: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> Value {
        self.wait(within, || {
            self.events_where(message, &mine).into_iter().next()
        })
        .await
    }

    /// The closing of each span with this name: `span` holds its fields, `spans` its parents and itself.
    pub fn closed(&self, name: &str) -> Vec<Value> {
        self.events("close")
            .into_iter()
            .filter(|line| line["span"]["name"] == name)
            .collect()
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

/// Whether the line was logged inside the request with this `x-request-id`, or is its access-log line
/// (logged after the request's span, naming the id itself).
pub fn in_request(line: &Value, request_id: &str) -> bool {
    line["span"]["request_id"] == request_id
        || line["fields"]["request_id"] == request_id
        || line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == request_id))
}

/// The span named `name` among those an event (or a closing) was logged in.
pub fn span<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|span| span["name"] == name))
        .unwrap_or_else(|| panic!("no span {name:?} in {line}"))
}

impl Drop for Traces {
    fn drop(&mut self) {
        CAPTURES
            .lock()
            .unwrap()
            .retain(|b| !Arc::ptr_eq(b, &self.buffer));
    }
}

//! The job event bus between processes sharing one database: every `JobEvents` message published
//! here is applied by every other process. Redis pub/sub on `<redis_prefix>:job-events` when
//! `redis_url` is set, else PostgreSQL `LISTEN/NOTIFY` on `sonicgw_job_events`; the embedded
//! default (SQLite) has no bus. Messages carry the publishing process's random origin, so a process
//! skips its own (it applied them already); malformed ones are counted and ignored. A lost
//! connection is re-established with backoff, after which every listener re-reads, as messages
//! may have been missed; until then the `job_poll_s` poll keeps followers and workers correct.

mod postgres;
mod redis;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::events::Listeners;
pub use wire::{Event, Malformed, Message, Origin, MAX_MESSAGE_BYTES};

/// Messages waiting to be published; past this, new ones are dropped (and counted): the poll
/// covers them.
const PUBLISH_QUEUE: usize = 4096;
/// Messages sent in one round trip at most.
const PUBLISH_BATCH: usize = 256;
/// A publish that takes longer is given up (and counted).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long start waits for the first subscription before carrying on without it (it keeps trying).
const FIRST_SUBSCRIPTION_WAIT: Duration = Duration::from_secs(5);
/// Reconnection delays: from the first to the largest, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Which bus, from the configuration.
#[derive(Debug, Clone)]
pub enum BusKind {
    /// Redis pub/sub on `<prefix>:job-events`.
    Redis { url: String, prefix: String },
    /// PostgreSQL `LISTEN/NOTIFY` in the database at `url`.
    Postgres { url: String },
}

impl BusKind {
    /// The bus of a configuration: Redis when `redis_url` is set, else PostgreSQL when the store is,
    /// else none (one process, events stay in it).
    pub fn of(config: &crate::config::Config) -> Option<Self> {
        if let Some(url) = config.redis_url() {
            return Some(BusKind::Redis {
                url: url.to_owned(),
                prefix: config.redis_prefix.clone(),
            });
        }
        let database = config.database_url();
        (database.starts_with("postgres://") || database.starts_with("postgresql://"))
            .then_some(BusKind::Postgres { url: database })
    }
}

/// One connection to a bus: publishing, and listening until the connection ends.
#[async_trait::async_trait]
trait Transport: Send + Sync + 'static {
    /// `redis` or `postgres`, for logs and metrics.
    fn name(&self) -> &'static str;
    /// Sends `messages` in one round trip.
    async fn publish(&self, messages: &[String]) -> anyhow::Result<()>;
    /// Subscribes, calls `inbox.connected()`, then hands every message to `inbox.receive` until the
    /// connection ends (`Ok`) or fails (`Err`).
    async fn listen(&self, inbox: &Inbox) -> anyhow::Result<()>;
}

enum Outgoing {
    Message(String),
    Flush(oneshot::Sender<()>),
}

/// This process's side of the bus: sends what it publishes. Clones share one queue; when the last
/// is dropped the publishing and listening tasks end.
#[derive(Clone)]
pub struct Publisher {
    origin: Origin,
    queue: mpsc::Sender<Outgoing>,
    transport: &'static str,
    _running: Arc<DropGuard>,
}

impl Publisher {
    /// Queues `event` for the bus; never waits. A full queue drops it (counted).
    pub fn publish(&self, event: Event) {
        let message = Message {
            origin: self.origin,
            event,
        };
        if self
            .queue
            .try_send(Outgoing::Message(message.to_string()))
            .is_err()
        {
            metrics::counter!("job_events_dropped_total", "bus" => self.transport).increment(1);
        }
    }

    /// Waits, at most `within`, until everything queued before this call was sent (or given up).
    pub async fn flush(&self, within: Duration) {
        let (done, sent) = oneshot::channel();
        let _ = tokio::time::timeout(within, async {
            if self.queue.send(Outgoing::Flush(done)).await.is_ok() {
                let _ = sent.await;
            }
        })
        .await;
    }
}

/// Connects the bus and starts its tasks: one publishing what this process queues, one listening
/// and applying other processes' messages to `listeners`. Waits up to 5 s for the subscription, so
/// a process that starts serving hears the others from its first request.
pub async fn start(kind: BusKind, listeners: Arc<Listeners>) -> anyhow::Result<Publisher> {
    let transport: Arc<dyn Transport> = match kind {
        BusKind::Redis { url, prefix } => Arc::new(redis::RedisBus::connect(&url, &prefix).await?),
        BusKind::Postgres { url } => Arc::new(postgres::PgBus::new(&url)?),
    };
    let origin = Origin::random();
    let stop = CancellationToken::new();
    let (connections, mut connected) = watch::channel(0u64);
    let inbox = Inbox {
        origin,
        listeners,
        connections,
        transport: transport.name(),
    };
    tokio::spawn(listen_until_stopped(
        Arc::clone(&transport),
        inbox,
        stop.clone(),
    ));
    let (queue, outgoing) = mpsc::channel(PUBLISH_QUEUE);
    tokio::spawn(publish_until_closed(Arc::clone(&transport), outgoing));
    if tokio::time::timeout(FIRST_SUBSCRIPTION_WAIT, connected.wait_for(|n| *n > 0))
        .await
        .is_err()
    {
        tracing::warn!(bus = transport.name(), "the job event bus is not reachable yet; other processes' changes are polled for until it is");
    }
    tracing::info!(bus = transport.name(), origin = %origin, "job events are shared through the bus");
    Ok(Publisher {
        origin,
        queue,
        transport: transport.name(),
        _running: Arc::new(stop.drop_guard()),
    })
}

/// Where a transport delivers what it hears.
struct Inbox {
    origin: Origin,
    listeners: Arc<Listeners>,
    /// Subscriptions made so far.
    connections: watch::Sender<u64>,
    transport: &'static str,
}

impl Inbox {
    /// A (re)subscription took hold: whatever was published while there was none is unknown, so
    /// every listener re-reads.
    fn connected(&self) {
        self.connections.send_modify(|n| *n += 1);
        self.listeners.missed();
    }

    /// Applies one message from the channel, unless it is this process's own or malformed.
    fn receive(&self, bytes: &[u8]) {
        let outcome = match Message::parse(bytes) {
            Ok(message) if message.origin == self.origin => "own",
            Ok(message) => {
                self.listeners.apply(message.event);
                "applied"
            }
            Err(why) => {
                // Debug only: whoever can publish on the channel could otherwise flood the log.
                tracing::debug!(bus = self.transport, reason = %why, bytes = bytes.len(), "malformed job event ignored");
                "malformed"
            }
        };
        metrics::counter!("job_events_received_total", "bus" => self.transport, "outcome" => outcome)
            .increment(1);
    }
}

async fn listen_until_stopped(
    transport: Arc<dyn Transport>,
    inbox: Inbox,
    stop: CancellationToken,
) {
    let mut delay = BACKOFF_FIRST;
    loop {
        let before = *inbox.connections.borrow();
        let ended = tokio::select! {
            ended = transport.listen(&inbox) => ended,
            () = stop.cancelled() => return,
        };
        if *inbox.connections.borrow() > before {
            // It was up: the next attempt starts from the shortest delay.
            delay = BACKOFF_FIRST;
        }
        match ended {
            Ok(()) => tracing::warn!(
                bus = transport.name(),
                retry_ms = delay.as_millis() as u64,
                "job event bus connection closed; reconnecting"
            ),
            Err(err) => {
                tracing::warn!(bus = transport.name(), retry_ms = delay.as_millis() as u64, error = %err, "job event bus unreachable; reconnecting")
            }
        }
        metrics::counter!("job_events_reconnects_total", "bus" => transport.name()).increment(1);
        tokio::select! {
            () = tokio::time::sleep(jittered(delay)) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// `delay` plus up to a quarter more, so processes cut off together do not reconnect in step.
fn jittered(delay: Duration) -> Duration {
    use rand::Rng;
    let quarter = delay.as_millis() as u64 / 4;
    delay + Duration::from_millis(rand::thread_rng().gen_range(0..=quarter))
}

async fn publish_until_closed(
    transport: Arc<dyn Transport>,
    mut outgoing: mpsc::Receiver<Outgoing>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut failing = false;
    while outgoing.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut messages = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for item in batch.drain(..) {
            match item {
                Outgoing::Message(message) => messages.push(message),
                Outgoing::Flush(done) => flushes.push(done),
            }
        }
        if !messages.is_empty() {
            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, transport.publish(&messages))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            let count = messages.len() as u64;
            match sent {
                Ok(()) => {
                    metrics::counter!("job_events_published_total", "bus" => transport.name())
                        .increment(count);
                    if failing {
                        tracing::info!(bus = transport.name(), "publishing job events works again");
                        failing = false;
                    }
                }
                Err(err) => {
                    metrics::counter!("job_events_dropped_total", "bus" => transport.name())
                        .increment(count);
                    // Once per outage, not once per message.
                    if !failing {
                        tracing::warn!(bus = transport.name(), error = %err, "publishing job events failed; other processes poll meanwhile");
                        failing = true;
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

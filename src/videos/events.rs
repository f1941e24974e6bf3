//! Change notifications for jobs: workers and handlers publish a job id when it changes;
//! followers of a job (Server-Sent Events) and idle workers wake on them. With a bus
//! (`videos::bus`: Redis pub/sub, or PostgreSQL LISTEN/NOTIFY) every process sharing the database
//! hears them; without one (the embedded default) only this process does. Either way this is an
//! accelerator, not the source of truth: followers and idle workers also re-read the database every
//! `job_poll_s`, which covers other processes without a bus and messages lost while a bus is down.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;

use super::bus::{Event, Publisher};
use super::jobs::Audience;
use super::view::JobView;
use super::VideoService;
use crate::domain::{JobId, JobStatus};
use crate::storage::jobs::{JobRecord, JobScope};

/// What this process's listeners hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// This job changed (or, on the stopped channel, was stopped).
    Job(JobId),
    /// Messages from other processes may have been missed (the bus reconnected): re-read.
    Missed,
}

/// This process's listeners: what the bus delivers to, and what local changes reach directly.
pub struct Listeners {
    changed: broadcast::Sender<Notice>,
    stopped: broadcast::Sender<Notice>,
    queued: Arc<tokio::sync::Notify>,
}

impl Listeners {
    fn new() -> Self {
        let (changed, _) = broadcast::channel(1024);
        let (stopped, _) = broadcast::channel(256);
        Self {
            changed,
            stopped,
            queued: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Delivers `event` to this process's listeners.
    pub fn apply(&self, event: Event) {
        match event {
            Event::Changed(job) => {
                let _ = self.changed.send(Notice::Job(job));
            }
            Event::Stopped(job) => {
                let _ = self.stopped.send(Notice::Job(job));
            }
            // Every idle worker wakes (they serve different engines; the first to claim takes the job).
            Event::Queued => self.queued.notify_waiters(),
        }
    }

    /// Tells every listener that changes may have been missed: followers re-read their job,
    /// running jobs check their lease, idle workers look for work.
    pub fn missed(&self) {
        let _ = self.changed.send(Notice::Missed);
        let _ = self.stopped.send(Notice::Missed);
        self.queued.notify_waiters();
    }
}

/// Fan-out of "this job changed", "this job was stopped" and "a job was queued", to this process
/// and, through the bus when there is one, to every other.
#[derive(Clone)]
pub struct JobEvents {
    listeners: Arc<Listeners>,
    bus: Option<Publisher>,
}

impl JobEvents {
    /// Events that stay in this process (the embedded default: one process).
    pub fn new() -> Self {
        Self {
            listeners: Arc::new(Listeners::new()),
            bus: None,
        }
    }

    /// Events shared with every process on `bus` (see `videos::bus::start`).
    pub async fn with_bus(bus: super::bus::BusKind) -> anyhow::Result<Self> {
        let listeners = Arc::new(Listeners::new());
        let bus = super::bus::start(bus, Arc::clone(&listeners)).await?;
        Ok(Self {
            listeners,
            bus: Some(bus),
        })
    }

    fn emit(&self, event: Event) {
        self.listeners.apply(event);
        if let Some(bus) = &self.bus {
            bus.publish(event);
        }
    }

    pub fn changed(&self, job: JobId) {
        self.emit(Event::Changed(job));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.listeners.changed.subscribe()
    }

    /// A running job was cancelled or deleted: its worker, in whichever process, stops now rather
    /// than at its next heartbeat.
    pub fn stopped(&self, job: JobId) {
        self.emit(Event::Stopped(job));
    }

    pub fn subscribe_stopped(&self) -> broadcast::Receiver<Notice> {
        self.listeners.stopped.subscribe()
    }

    /// Wakes every idle worker and waiting lease request, here and in other processes.
    pub fn queued(&self) {
        self.emit(Event::Queued);
    }

    /// A wake-up for the next `queued`: create it before looking for work, so a job queued in
    /// between is not missed.
    pub fn next_queued(&self) -> std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>> {
        let mut notified = Box::pin(Arc::clone(&self.listeners.queued).notified_owned());
        notified.as_mut().enable();
        notified
    }

    /// Waits, at most `within`, until what was published so far has left for the bus (at
    /// shutdown: the jobs handed back are announced before the process exits).
    pub async fn flush(&self, within: Duration) {
        if let Some(bus) = &self.bus {
            bus.flush(within).await;
        }
    }
}

impl Default for JobEvents {
    fn default() -> Self {
        Self::new()
    }
}

/// How often a follower checks that its credential still holds (an in-memory lookup).
const FOLLOW_REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// What a follower of a job sees.
pub enum FollowEvent {
    /// The job changed (status, stage, progress or queue position).
    Job(Box<JobView>),
    /// The stream is over.
    End(EndReason),
}

/// Why a follow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The job reached this final status.
    Finished(JobStatus),
    /// The job was deleted.
    Deleted,
    /// The follower's token expired: reconnect with a fresh one.
    TokenExpired,
    /// The follower's token was revoked.
    TokenRevoked,
}

impl EndReason {
    /// The `end` event's JSON body.
    pub fn to_json(self) -> String {
        match self {
            EndReason::Finished(status) => serde_json::json!({ "status": status }).to_string(),
            EndReason::Deleted => r#"{"reason":"deleted"}"#.to_owned(),
            EndReason::TokenExpired => r#"{"reason":"token_expired"}"#.to_owned(),
            EndReason::TokenRevoked => r#"{"reason":"token_revoked"}"#.to_owned(),
        }
    }
}

/// The credential a follower holds: when it expires, and how to tell it was revoked.
pub struct FollowerCredential {
    pub expires_at: tokio::time::Instant,
    pub is_revoked: Box<dyn Fn() -> bool + Send + Sync>,
}

impl VideoService {
    /// The job's changes as they happen, until it ends, is deleted, or the credential expires or is
    /// revoked. Wakes on the job's events; re-reads the job every `job_poll_s` otherwise.
    pub fn follow(
        self: Arc<Self>,
        scope: JobScope,
        job: JobRecord,
        audience: Audience,
        credential: FollowerCredential,
    ) -> impl Stream<Item = FollowEvent> {
        let mut changes = self.events.subscribe();
        let poll = self.settings.poll;
        async_stream::stream! {
            let mut revocation_check = tokio::time::interval(FOLLOW_REVOCATION_CHECK);
            let mut last: Option<(JobStatus, String, String, Option<i64>)> = None;
            let mut current = Some(job);
            loop {
                let Some(job) = current.take() else {
                    yield FollowEvent::End(EndReason::Deleted);
                    break;
                };
                if let Ok(view) = self.view_for(&job, audience).await {
                    let key = (
                        view.status,
                        view.stage.to_string(),
                        format!("{:.3}", view.progress),
                        view.queue_position,
                    );
                    let status = view.status;
                    if last.as_ref() != Some(&key) {
                        last = Some(key);
                        yield FollowEvent::Job(Box::new(view));
                    }
                    if status.is_final() {
                        yield FollowEvent::End(EndReason::Finished(status));
                        break;
                    }
                }
                let ended = tokio::select! {
                    () = wait_for_change(&mut changes, job.id) => None,
                    () = tokio::time::sleep(poll) => None,
                    () = tokio::time::sleep_until(credential.expires_at) => Some(EndReason::TokenExpired),
                    () = async {
                        loop {
                            revocation_check.tick().await;
                            if (credential.is_revoked)() {
                                break;
                            }
                        }
                    } => Some(EndReason::TokenRevoked),
                };
                if let Some(reason) = ended {
                    yield FollowEvent::End(reason);
                    break;
                }
                current = self.store.job(scope, job.id).await.ok().flatten();
            }
        }
    }
}

/// Returns when a change of `job` is reported (or when changes may have been missed).
async fn wait_for_change(changes: &mut broadcast::Receiver<Notice>, job: JobId) {
    use broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(Notice::Job(changed)) if changed == job => return,
            Ok(Notice::Missed) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

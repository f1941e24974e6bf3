//! Change notifications for jobs within this process: workers and handlers publish a job id when it
//! changes; followers of a job (Server-Sent Events) and idle workers wake on them. Other processes'
//! changes are picked up by a slow poll, so this is an accelerator, not the source of truth.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;

use super::jobs::Audience;
use super::view::JobView;
use super::VideoService;
use crate::domain::{JobId, JobStatus};
use crate::storage::jobs::{JobRecord, JobScope};

/// Fan-out of "this job changed" and "a job was queued".
#[derive(Clone)]
pub struct JobEvents {
    changed: broadcast::Sender<JobId>,
    /// A running job was cancelled or deleted here: its worker stops now, not at its next heartbeat.
    stopped: broadcast::Sender<JobId>,
    queued: std::sync::Arc<tokio::sync::Notify>,
}

impl JobEvents {
    pub fn new() -> Self {
        let (changed, _) = broadcast::channel(1024);
        let (stopped, _) = broadcast::channel(256);
        Self {
            changed,
            stopped,
            queued: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn changed(&self, job: JobId) {
        let _ = self.changed.send(job);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobId> {
        self.changed.subscribe()
    }

    pub fn stopped(&self, job: JobId) {
        let _ = self.stopped.send(job);
    }

    pub fn subscribe_stopped(&self) -> broadcast::Receiver<JobId> {
        self.stopped.subscribe()
    }

    /// Wakes every idle worker (they serve different engines; the first to claim takes the job).
    pub fn queued(&self) {
        self.queued.notify_waiters();
    }

    /// A wake-up for the next `queued`: create it before looking for work, so a job queued in
    /// between is not missed.
    pub fn next_queued(&self) -> std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>> {
        let mut notified = Box::pin(Arc::clone(&self.queued).notified_owned());
        notified.as_mut().enable();
        notified
    }
}

impl Default for JobEvents {
    fn default() -> Self {
        Self::new()
    }
}

/// How often a follower re-reads its job when nothing in this process said it changed (changes made
/// by other processes sharing the database). In-process changes arrive at once through the bus.
const FOLLOW_FALLBACK_POLL: Duration = Duration::from_secs(15);
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
    /// revoked. Wakes on this process's event bus; re-reads the job at most every
    /// `FOLLOW_FALLBACK_POLL` (15 s) otherwise.
    pub fn follow(
        self: Arc<Self>,
        scope: JobScope,
        job: JobRecord,
        audience: Audience,
        credential: FollowerCredential,
    ) -> impl Stream<Item = FollowEvent> {
        let mut changes = self.events.subscribe();
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
                    () = tokio::time::sleep(FOLLOW_FALLBACK_POLL) => None,
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

/// Returns when this process reports a change of `job` (or when changes were missed).
async fn wait_for_change(changes: &mut broadcast::Receiver<JobId>, job: JobId) {
    use broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(changed) if changed == job => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

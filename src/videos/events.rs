//! Change notifications for jobs within this process: workers and handlers publish a job id when it
//! changes; Server-Sent Events streams and idle workers wake on them. Other processes' changes are picked
//! up by polling, so this is an accelerator, not the source of truth.

use tokio::sync::broadcast;

use crate::domain::JobId;

/// Fan-out of "this job changed" and "a job was queued".
#[derive(Clone)]
pub struct JobEvents {
    changed: broadcast::Sender<JobId>,
    queued: std::sync::Arc<tokio::sync::Notify>,
}

impl JobEvents {
    pub fn new() -> Self {
        let (changed, _) = broadcast::channel(1024);
        Self {
            changed,
            queued: std::sync::Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn changed(&self, job: JobId) {
        let _ = self.changed.send(job);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobId> {
        self.changed.subscribe()
    }

    /// Wakes one idle worker.
    pub fn queued(&self) {
        self.queued.notify_one();
    }

    pub async fn wait_for_queued(&self) {
        self.queued.notified().await;
    }
}

impl Default for JobEvents {
    fn default() -> Self {
        Self::new()
    }
}

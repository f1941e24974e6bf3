//! The webhook outbox's drainer: every server process takes due deliveries from the
//! `webhook_outbox` table (`WebhookOutbox::claim_webhooks`), attempts each once, and removes it or
//! schedules its retry (`webhook::RETRY_DELAYS`). A delivery is queued when its job ends, by
//! whichever process records the end; a process that dies holding one only delays it (it is due
//! again `HOLD` later), so a webhook is delivered at least once (receivers deduplicate on
//! `webhook-id`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use super::webhook::{self, Attempt};
use super::VideoService;
use crate::storage::QueuedWebhook;
use crate::time::now_ms;

/// How long a taken delivery is this process's: past one attempt's lookup (5 s) and request (10 s).
const HOLD: Duration = Duration::from_secs(60);
/// How often the outbox is looked at when this process queued nothing.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries attempted at once by one process.
const IN_FLIGHT: usize = 32;

/// This process's drainer: woken when this process queues a delivery, bounded in flight.
pub struct WebhookDrainer {
    wake: Notify,
    in_flight: Arc<Semaphore>,
}

impl Default for WebhookDrainer {
    fn default() -> Self {
        Self {
            wake: Notify::new(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }
}

impl WebhookDrainer {
    /// A delivery was queued here: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Starts draining the outbox on the service's task tracker until `stop`; attempts in flight then
/// finish within the shutdown grace (or are taken again by another process after `HOLD`).
pub fn spawn_webhook_drainer(service: Arc<VideoService>, mut stop: watch::Receiver<bool>) {
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = service.drain_webhooks() => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
    });
}

impl VideoService {
    async fn drain_webhooks(self: Arc<Self>) {
        loop {
            let woken = self.webhooks.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let free = self.webhooks.in_flight.available_permits();
            let mut full_batch = false;
            if free > 0 {
                let now = now_ms();
                match self
                    .store
                    .claim_webhooks(now, now + HOLD, free as i64)
                    .await
                {
                    Ok(due) => {
                        full_batch = due.len() == free;
                        for webhook in due {
                            self.attempt_in_background(webhook).await;
                        }
                    }
                    Err(err) => tracing::error!(error = %err, "reading the webhook outbox failed"),
                }
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn attempt_in_background(self: &Arc<Self>, webhook: QueuedWebhook) {
        let Ok(permit) = Arc::clone(&self.webhooks.in_flight).acquire_owned().await else {
            return;
        };
        let service = Arc::clone(self);
        self.tasks.spawn(async move {
            service.attempt_webhook(webhook).await;
            drop(permit);
        });
    }

    /// One attempt, then the delivery is removed (delivered, refused for good, out of attempts)
    /// or due again after its retry delay.
    async fn attempt_webhook(&self, webhook: QueuedWebhook) {
        let allow_private = self.settings.webhook_allow_private;
        let attempt = webhook::deliver_once(self.store.as_ref(), &webhook, allow_private).await;
        let retry_in = match attempt {
            Attempt::Failed { retry: true } => usize::try_from(webhook.attempts)
                .ok()
                .and_then(|n| webhook::RETRY_DELAYS.get(n)),
            Attempt::Delivered | Attempt::Failed { retry: false } => None,
        };
        let recorded = match retry_in {
            Some(delay) => {
                self.store
                    .retry_webhook(&webhook.message_id, now_ms() + *delay)
                    .await
            }
            None => {
                if attempt != Attempt::Delivered {
                    tracing::warn!(message_id = %webhook.message_id, attempts = webhook.attempts + 1, "webhook given up");
                }
                self.store.remove_webhook(&webhook.message_id).await
            }
        };
        if let Err(err) = recorded {
            // It is due again when its hold ends, and attempted again then.
            tracing::warn!(message_id = %webhook.message_id, error = %err, "recording a webhook attempt failed");
        }
    }
}

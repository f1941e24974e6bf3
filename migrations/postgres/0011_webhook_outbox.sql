-- Webhooks waiting to be delivered: written when a job ends, drained by whichever server process
-- claims them (next_attempt_at moves past the attempt while one process holds it, so a process that
-- dies mid-attempt only delays the delivery). Times are Unix milliseconds.
CREATE TABLE webhook_outbox (
    message_id      TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at);

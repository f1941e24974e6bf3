-- Video jobs: durable queue rows, claimed with a lease. Times are Unix milliseconds.
CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    user_id             TEXT NOT NULL,
    status              TEXT NOT NULL,
    stage               TEXT NOT NULL,
    progress            DOUBLE PRECISION NOT NULL DEFAULT 0,
    engine              TEXT NOT NULL,
    params              TEXT NOT NULL,
    input               TEXT NOT NULL,
    output_plan         TEXT NOT NULL,
    callback_url        TEXT,
    -- Weighted-fair-queuing finish tag: the queue is served in (vtag, created_at) order.
    vtag                DOUBLE PRECISION NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    worker_id           TEXT,
    lease_expires_at    BIGINT,
    counts_toward_quota BOOLEAN NOT NULL DEFAULT TRUE,
    error_code          TEXT,
    error_message       TEXT,
    result_key          TEXT,
    result_bytes        BIGINT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    updated_at          BIGINT NOT NULL,
    -- Deleted jobs keep their row (without files) so they still count toward the daily quota.
    deleted_at          BIGINT
);
CREATE INDEX jobs_queue ON jobs(status, vtag, created_at);
CREATE INDEX jobs_user ON jobs(user_id, created_at);
CREATE INDEX jobs_tenant ON jobs(tenant_id, created_at);

-- The queue's virtual clock: the tag of the job dispatched last.
CREATE TABLE queue_clock (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    vtime  DOUBLE PRECISION NOT NULL
);
INSERT INTO queue_clock (id, vtime) VALUES (1, 0);

CREATE TABLE idempotency_keys (
    user_id       TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    job_id        TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (user_id, key)
);

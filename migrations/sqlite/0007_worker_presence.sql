-- Remote workers: a worker token carries its account's `token_generation`, which disabling the account
-- or rotating its secret increments, so that older tokens are refused for good; and each `sonicgw worker` process
-- reports the capacity it has per engine (`worker_presence`), so that API processes without GPU access
-- can estimate when queued jobs start.
ALTER TABLE worker_accounts ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;

CREATE TABLE worker_presence (
    account_id  TEXT NOT NULL REFERENCES worker_accounts (id) ON DELETE CASCADE,
    process     TEXT NOT NULL,
    engine      TEXT NOT NULL,
    capacity    INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL,
    PRIMARY KEY (account_id, process, engine)
);
CREATE INDEX worker_presence_seen ON worker_presence (seen_at);

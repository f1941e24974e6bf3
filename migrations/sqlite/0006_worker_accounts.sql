-- Service accounts of remote GPU workers (`sonicgw worker`): OAuth 2.0 clients of the
-- client_credentials grant. The secret is stored as an Argon2id hash. Times are Unix milliseconds.
CREATE TABLE worker_accounts (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    client_id     TEXT NOT NULL UNIQUE,
    secret_hash   TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER
);

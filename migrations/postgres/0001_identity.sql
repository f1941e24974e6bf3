-- Tenants, users, tokens, revocations and the audit chain. Times are Unix milliseconds.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    plan        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    username       TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,
    plan           TEXT,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    UNIQUE (tenant_id, username)
);
CREATE INDEX users_username ON users(username);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    tenant_id   TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id);

CREATE TABLE access_tokens (
    jti         TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    family_id   TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX access_tokens_user ON access_tokens(user_id);
CREATE INDEX access_tokens_family ON access_tokens(family_id);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_revoked_at ON revoked_tokens(revoked_at);

CREATE TABLE audit_log (
    seq              BIGINT PRIMARY KEY,
    at               BIGINT NOT NULL,
    request_id       TEXT,
    actor_user_id    TEXT,
    actor_tenant_id  TEXT,
    tenant_id        TEXT,
    client_ip        TEXT,
    user_agent       TEXT,
    action           TEXT NOT NULL,
    target           TEXT,
    outcome          TEXT NOT NULL,
    reason           TEXT,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log(tenant_id, seq);

-- Per-tenant secrets that sign webhook deliveries (Standard Webhooks).
CREATE TABLE webhook_secrets (
    tenant_id   TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

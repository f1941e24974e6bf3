-- The visible AI label's texts a tenant uses instead of the defaults ("AI生成", "AI-generated").
-- No row: the defaults.
CREATE TABLE tenant_labels (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    text_zh     TEXT NOT NULL,
    text_en     TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);

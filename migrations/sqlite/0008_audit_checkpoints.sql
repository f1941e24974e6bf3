-- Signed checkpoints of the audit chain: the head's sequence number and hash, signed with the token
-- signing key (a JWS in `document`). Deleting the newest records leaves the chain consistent, but no
-- longer reaching the latest checkpoint: `sonicgw audit verify` reports it. Times are Unix milliseconds.
CREATE TABLE audit_checkpoints (
    seq         INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    document    TEXT NOT NULL
);

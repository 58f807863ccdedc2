-- Short-lived console tokens handed out in Nova console URLs, stored hashed.
CREATE TABLE console_tokens (
    token_sha256 TEXT PRIMARY KEY NOT NULL,
    instance_id  TEXT NOT NULL,
    protocol     TEXT NOT NULL,
    single_use   BOOLEAN NOT NULL,
    used         BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at   BIGINT NOT NULL,
    time_created BIGINT NOT NULL
);

CREATE INDEX console_tokens_by_expiry ON console_tokens (expires_at);

-- opc-retry-token idempotency for creates: one row per caller and token,
-- kept for 24 hours. The request hash tells a replay from a conflict.
CREATE TABLE retry_tokens (
    caller        TEXT NOT NULL,
    token         TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    time_created  BIGINT NOT NULL,
    PRIMARY KEY (caller, token)
);

CREATE INDEX retry_tokens_by_age ON retry_tokens (time_created);
CREATE INDEX console_connections_by_state ON console_connections (lifecycle_state, time_updated);

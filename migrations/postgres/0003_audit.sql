-- Who attached to which console, when, from where, and what they did.
CREATE TABLE audit_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time          BIGINT NOT NULL,
    event         TEXT NOT NULL,
    connection_id TEXT,
    instance_id   TEXT,
    fingerprint   TEXT,
    peer          TEXT,
    read_only     BOOLEAN,
    bytes_in      BIGINT,
    bytes_out     BIGINT,
    duration_ms   BIGINT,
    detail        TEXT
);

CREATE INDEX audit_events_by_connection ON audit_events (connection_id, id);
CREATE INDEX audit_events_by_instance ON audit_events (instance_id, id);
CREATE INDEX audit_events_by_time ON audit_events (time);

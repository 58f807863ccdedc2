-- Who attached to which console, when, from where, and what they did.
CREATE TABLE audit_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          INTEGER NOT NULL,
    event         TEXT NOT NULL,
    connection_id TEXT,
    instance_id   TEXT,
    fingerprint   TEXT,
    peer          TEXT,
    read_only     INTEGER,
    bytes_in      INTEGER,
    bytes_out     INTEGER,
    duration_ms   INTEGER,
    detail        TEXT
);

CREATE INDEX audit_events_by_connection ON audit_events (connection_id, id);
CREATE INDEX audit_events_by_instance ON audit_events (instance_id, id);
CREATE INDEX audit_events_by_time ON audit_events (time);

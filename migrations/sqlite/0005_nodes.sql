-- Gateway nodes sharing this store: each registers on start, beats while
-- it runs and says when it leaves. Times are Unix milliseconds (UTC).
CREATE TABLE nodes (
    node_id    TEXT PRIMARY KEY NOT NULL,
    advertise  TEXT,
    version    TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    left_at    INTEGER
);

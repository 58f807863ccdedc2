-- Console connections. Times are Unix milliseconds (UTC).
CREATE TABLE console_connections (
    id              TEXT PRIMARY KEY NOT NULL,
    compartment_id  TEXT NOT NULL,
    instance_id     TEXT NOT NULL,
    lifecycle_state TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    freeform_tags   TEXT NOT NULL DEFAULT '{}',
    defined_tags    TEXT NOT NULL DEFAULT '{}',
    time_created    BIGINT NOT NULL,
    time_updated    BIGINT NOT NULL,
    time_deleted    BIGINT
);

CREATE INDEX console_connections_by_compartment
    ON console_connections (compartment_id, time_created);
CREATE INDEX console_connections_by_instance
    ON console_connections (instance_id, time_created);

-- The per-instance policy: one live connection per instance and client key.
-- Enforced here so that two nodes creating at once cannot both succeed.
CREATE UNIQUE INDEX console_connections_one_live_per_key
    ON console_connections (instance_id, fingerprint)
    WHERE lifecycle_state IN ('CREATING', 'ACTIVE');

-- The inner hop's host key of each instance (OpenSSH private key text).
CREATE TABLE instance_host_keys (
    instance_id  TEXT PRIMARY KEY NOT NULL,
    private_key  TEXT NOT NULL,
    time_created BIGINT NOT NULL
);

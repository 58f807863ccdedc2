-- Which node holds each instance's console backend (a QEMU chardev serves
-- one client). Taken and renewed by single conditional statements; the
-- epoch grows each time the lease changes hands. Times are Unix
-- milliseconds by the database's clock.
CREATE TABLE console_leases (
    instance_id TEXT PRIMARY KEY NOT NULL,
    owner       TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

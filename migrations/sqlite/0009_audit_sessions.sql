-- Which gateway process ran a console session, and which of its sessions
-- an audit row is about: its `[cluster] node_id` (NULL for a gateway
-- alone), its incarnation (random per process start) and the session's
-- number in that process. The Attach, Force, Break, Timeout and Detach
-- rows of one session carry the same three, so that a process that starts
-- after a crash can write the Detach rows its predecessor could not, for
-- exactly the sessions that lack one. A session has at most one Detach
-- row, whoever writes it.
ALTER TABLE audit_events ADD COLUMN node_id TEXT;
ALTER TABLE audit_events ADD COLUMN incarnation TEXT;
ALTER TABLE audit_events ADD COLUMN session_number INTEGER;

CREATE UNIQUE INDEX audit_events_one_detach ON audit_events (incarnation, session_number)
    WHERE event = 'detach' AND session_number IS NOT NULL;
CREATE INDEX audit_events_session_attach ON audit_events (node_id, incarnation)
    WHERE event = 'attach' AND session_number IS NOT NULL;

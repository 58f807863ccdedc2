-- A random id each gateway process picks when it starts: two processes
-- configured with one node_id cannot both register (the second waits for
-- the first to go quiet), and a node whose row another process took over
-- learns it at its next heartbeat.
ALTER TABLE nodes ADD COLUMN incarnation TEXT;

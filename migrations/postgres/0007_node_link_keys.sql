-- Each node's public key for the node-to-node link (OpenSSH format): the
-- other nodes accept a link from, and connect a link to, only the key the
-- node registered here.
ALTER TABLE nodes ADD COLUMN link_key TEXT;

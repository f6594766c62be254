-- The out-of-stock emails go through the outbox too (channel
-- `out_of_stock`), so that none is lost to a crash after the commit or to
-- SMTP being down, and several instances send each once. Each destination
-- has a relay of its own: 'messages' (other systems, Redis) and
-- 'notifications' (people, email); a relay claims its destination's rows
-- only, so one that keeps failing never holds up the other. The rows
-- waiting from before are all messages.
--
-- Unlike 0009, no copy of the table: SQLite adds a NOT NULL column in
-- place when it has a default. The index makes a relay's claim a range
-- scan of its destination, oldest first.
ALTER TABLE outbox
    ADD COLUMN destination TEXT NOT NULL DEFAULT 'messages'
        CHECK (destination IN ('messages', 'notifications'));
CREATE INDEX outbox_destination_id ON outbox (destination, id);

-- The out-of-stock emails go through the outbox too (channel
-- `out_of_stock`), so that none is lost to a crash after the commit or to
-- SMTP being down, and several instances send each once. Each destination
-- has a relay of its own: 'messages' (other systems, Redis) and
-- 'notifications' (people, email); a relay claims its destination's rows
-- only, so one that keeps failing never holds up the other. The rows
-- waiting from before are all messages.
--
-- A constant default: PostgreSQL adds the column without rewriting the
-- table. The index makes a relay's claim a range scan of its destination,
-- oldest first, whatever the other destination's backlog.
ALTER TABLE outbox
    ADD COLUMN destination TEXT COLLATE "C" NOT NULL DEFAULT 'messages'
        CHECK (destination IN ('messages', 'notifications'));
CREATE INDEX outbox_destination_id ON outbox (destination, id);

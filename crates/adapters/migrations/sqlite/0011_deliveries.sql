-- The incoming messages (Redis stream entries) whose commands committed,
-- by key: written in the command's own transaction, so that an entry
-- delivered again after that commit (its consumer died before it
-- acknowledged the entry) is recognised and not run twice. Rows may be
-- deleted once no consumer can deliver them again (older than a day, say).
CREATE TABLE deliveries (
    delivery TEXT PRIMARY KEY,
    recorded_at BIGINT NOT NULL
);

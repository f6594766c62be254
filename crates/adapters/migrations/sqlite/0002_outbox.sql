-- The transactional outbox: each row is a `line_allocated` message, written
-- in the same transaction as the allocation it announces, so that nothing
-- committed can fail to be announced. The relay publishes rows in id order
-- and deletes them once published.
--
-- claimed_until (unix milliseconds) is a relay's lease on the row: other
-- relays skip it until then, so that several instances do not publish the
-- same message twice in normal operation. A relay that dies mid-way leaves
-- its rows to be claimed again when the lease ends.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    orderid TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty BIGINT NOT NULL CHECK (qty > 0),
    batchref TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    claimed_until BIGINT NULL
);

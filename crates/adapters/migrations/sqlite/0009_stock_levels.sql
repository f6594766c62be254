-- Stock-level messages (contract 7.3). A product's last announced level
-- lives beside its products row (only the version check writes that):
-- 'out', 'low' or 'in'; no row until the product first had stock.
CREATE TABLE stock_levels (
    sku TEXT PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('out', 'low', 'in'))
);

-- The outbox carries every message for other systems now, each on its
-- channel: `line_allocated` rows fill orderid, qty and batchref as
-- before; `stock_exhausted`, `back_in_stock` and `low_stock` rows fill
-- available and threshold instead. SQLite cannot drop a NOT NULL in
-- place, so the table is copied: it holds only the messages not yet
-- sent, a few at most.
CREATE TABLE outbox_with_channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL DEFAULT 'line_allocated',
    orderid TEXT NULL,
    sku TEXT NOT NULL,
    qty BIGINT NULL CHECK (qty > 0),
    batchref TEXT NULL,
    available BIGINT NULL,
    threshold BIGINT NULL,
    created_at BIGINT NOT NULL,
    claimed_until BIGINT NULL
);
INSERT INTO outbox_with_channels
    (id, message_id, orderid, sku, qty, batchref, created_at, claimed_until)
SELECT id, message_id, orderid, sku, qty, batchref, created_at, claimed_until FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_with_channels RENAME TO outbox;

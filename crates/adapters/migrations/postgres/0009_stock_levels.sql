-- Stock-level messages (contract 7.3). A product's last announced level
-- lives beside its products row (only the version check writes that):
-- 'out', 'low' or 'in'; no row until the product first had stock.
CREATE TABLE stock_levels (
    sku TEXT COLLATE "C" PRIMARY KEY,
    level TEXT NOT NULL CHECK (level IN ('out', 'low', 'in'))
);

-- The outbox carries every message for other systems now, each on its
-- channel: `line_allocated` rows fill orderid, qty and batchref as
-- before; `stock_exhausted`, `back_in_stock` and `low_stock` rows fill
-- available and threshold instead.
ALTER TABLE outbox
    ADD COLUMN channel TEXT NOT NULL DEFAULT 'line_allocated',
    ADD COLUMN available BIGINT NULL,
    ADD COLUMN threshold BIGINT NULL,
    ALTER COLUMN orderid DROP NOT NULL,
    ALTER COLUMN qty DROP NOT NULL,
    ALTER COLUMN batchref DROP NOT NULL;

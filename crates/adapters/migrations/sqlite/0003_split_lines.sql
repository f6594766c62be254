-- Lines split over several batches (an order allocated with "split": true,
-- or a part reallocated after its batch shrank): a line has one row per
-- batch it is on. UNIQUE (orderid, sku, batch_id) keeps one row per part,
-- and its leading (orderid, sku) still loads one order's line in a single
-- lookup. The read model shows one row per part likewise.
--
-- SQLite cannot change a table's constraints: each table is rebuilt, ids
-- kept (they order a batch's lines), as its documentation's "making other
-- kinds of table schema changes" describes.
CREATE TABLE allocations_split (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    orderid TEXT NOT NULL,
    sku TEXT NOT NULL,
    batch_id BIGINT NOT NULL REFERENCES batches (id),
    qty BIGINT NOT NULL CHECK (qty > 0),
    UNIQUE (orderid, sku, batch_id)
);
INSERT INTO allocations_split (id, orderid, sku, batch_id, qty)
SELECT id, orderid, sku, batch_id, qty FROM allocations;
DROP TABLE allocations;
ALTER TABLE allocations_split RENAME TO allocations;
CREATE INDEX allocations_batch_id_id ON allocations (batch_id, id);

CREATE TABLE allocations_view_split (
    orderid TEXT NOT NULL,
    sku TEXT NOT NULL,
    batchref TEXT NOT NULL,
    PRIMARY KEY (orderid, sku, batchref)
);
INSERT INTO allocations_view_split (orderid, sku, batchref)
SELECT orderid, sku, batchref FROM allocations_view;
DROP TABLE allocations_view;
ALTER TABLE allocations_view_split RENAME TO allocations_view;

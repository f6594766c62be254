-- The allocation schema, SQLite flavour. Same tables, columns and
-- constraints as migrations/postgres/0001_initial.sql: the adapter runs the
-- same queries on both.
--
-- Quantities and versions are BIGINT; dates are TEXT 'YYYY-MM-DD' because
-- sqlx's Any driver has no date type.

-- One row per product (aggregate root); the version number is checked and
-- bumped by every commit that changes the product (optimistic concurrency).
CREATE TABLE products (
    sku TEXT NOT NULL PRIMARY KEY,
    version_number BIGINT NOT NULL CHECK (version_number >= 0)
);

-- AUTOINCREMENT: ids are never reused, so `ORDER BY id` is creation order,
-- which breaks ties between equally preferred batches.
-- allocated_quantity is the total of the batch's lines, kept so that a
-- command can load a product without loading all of its lines.
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reference TEXT NOT NULL UNIQUE,
    sku TEXT NOT NULL REFERENCES products (sku),
    purchased_quantity BIGINT NOT NULL CHECK (purchased_quantity > 0),
    allocated_quantity BIGINT NOT NULL DEFAULT 0,
    eta TEXT NULL,
    CHECK (allocated_quantity >= 0 AND allocated_quantity <= purchased_quantity)
);

CREATE INDEX batches_sku_id ON batches (sku, id);

-- One row per allocated order line. UNIQUE (orderid, sku) is both the rule
-- "a line is allocated at most once" and the index that loads one order's
-- line in a single lookup however many lines the product has.
CREATE TABLE allocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    orderid TEXT NOT NULL,
    sku TEXT NOT NULL,
    batch_id BIGINT NOT NULL REFERENCES batches (id),
    qty BIGINT NOT NULL CHECK (qty > 0),
    UNIQUE (orderid, sku)
);

-- A batch's lines, oldest first: what shrinking a batch loads.
CREATE INDEX allocations_batch_id_id ON allocations (batch_id, id);

-- The read model (CQRS, book chapter 12): written in the same transaction
-- as the allocations, read by queries without touching the aggregates.
CREATE TABLE allocations_view (
    orderid TEXT NOT NULL,
    sku TEXT NOT NULL,
    batchref TEXT NOT NULL,
    PRIMARY KEY (orderid, sku)
);

-- The stock ledger. Every change to a batch's quantity is a movement in
-- stock_movements, written in the same transaction as the change; a batch
-- is identified by its reference (unique across products) and a movement
-- by the product's version number when it moved, so that the domain knows
-- it before anything is stored.
--
-- A batch's quantity is what came in less what went out. Its columns are
-- renamed for that: besides shipments, an adjustment or a smaller
-- quantity now takes units out, and the quantity may reach 0 while
-- quantity_in keeps the CHECK > 0 it had as purchased_quantity.
ALTER TABLE batches RENAME COLUMN purchased_quantity TO quantity_in;
ALTER TABLE batches RENAME COLUMN shipped_quantity TO quantity_out;

CREATE TABLE stock_movements (
    reference TEXT NOT NULL,
    number BIGINT NOT NULL,
    sku TEXT NOT NULL,
    -- Unix milliseconds.
    at BIGINT NOT NULL,
    delta BIGINT NOT NULL,
    qty_after BIGINT NOT NULL CHECK (qty_after >= 0),
    reason TEXT NOT NULL CHECK (reason IN ('received', 'changed', 'shipment', 'correction',
        'damaged', 'lost', 'found', 'cycle_count', 'returned')),
    note TEXT,
    source TEXT,
    PRIMARY KEY (reference, number)
);

-- Batches from before the ledger open it with their quantity, so that
-- every batch's movements sum to its quantity from the first start.
INSERT INTO stock_movements (reference, number, sku, at, delta, qty_after, reason, source)
SELECT b.reference, p.version_number, b.sku, (extract(epoch FROM now()) * 1000)::bigint,
       b.quantity_in - b.quantity_out, b.quantity_in - b.quantity_out, 'received', 'migration'
FROM batches b JOIN products p ON p.sku = b.sku;

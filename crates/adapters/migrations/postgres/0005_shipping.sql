-- Shipping and cancelling. A line that ships or whose order is cancelled
-- stops being allocated but stays the order's: its row stays, with the
-- state it ended in. Only allocated rows count in a batch's
-- allocated_quantity and are what shrinking a batch loads, hence the
-- partial index replacing allocations_batch_id_id.
--
-- A batch remembers what left it: its quantity is purchased_quantity less
-- shipped_quantity. (A batch whose every unit shipped has quantity 0,
-- which purchased_quantity's CHECK > 0 could not hold, and SQLite cannot
-- change a CHECK short of copying the table.)
ALTER TABLE allocations ADD COLUMN state TEXT NOT NULL DEFAULT 'allocated'
    CHECK (state IN ('allocated', 'shipped', 'cancelled'));
ALTER TABLE batches ADD COLUMN shipped_quantity BIGINT NOT NULL DEFAULT 0
    CHECK (shipped_quantity >= 0);

DROP INDEX allocations_batch_id_id;
CREATE INDEX allocations_batch_id_id ON allocations (batch_id, id)
    WHERE state = 'allocated';

-- Lines split over several batches (an order allocated with "split": true,
-- or a part reallocated after its batch shrank): a line has one row per
-- batch it is on. UNIQUE (orderid, sku, batch_id) keeps one row per part,
-- and its leading (orderid, sku) still loads one order's line in a single
-- lookup. The read model shows one row per part likewise.
ALTER TABLE allocations DROP CONSTRAINT allocations_orderid_sku_key;
ALTER TABLE allocations ADD CONSTRAINT allocations_orderid_sku_batch_id_key
    UNIQUE (orderid, sku, batch_id);

ALTER TABLE allocations_view DROP CONSTRAINT allocations_view_pkey;
ALTER TABLE allocations_view ADD PRIMARY KEY (orderid, sku, batchref);

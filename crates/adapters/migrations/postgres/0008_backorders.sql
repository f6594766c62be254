-- Backorders (contract 7.2). A SKU's settings live beside its products
-- row, not in it: the version check is the only writer of products. A SKU
-- without a row has the defaults, 0 and 0 (no backorders, no low-stock
-- messages).
CREATE TABLE product_settings (
    sku TEXT COLLATE "C" PRIMARY KEY,
    backorder_limit BIGINT NOT NULL CHECK (backorder_limit >= 0),
    low_stock_threshold BIGINT NOT NULL CHECK (low_stock_threshold >= 0)
);

-- A line waiting for stock, or one whose order was cancelled while it
-- waited. A filled or deallocated backorder is deleted: a filled one is
-- an allocated line in allocations from then on. `number` is the
-- product's version when it was placed: backorders are filled in its
-- order, oldest first.
CREATE TABLE backorders (
    sku TEXT COLLATE "C" NOT NULL,
    orderid TEXT COLLATE "C" NOT NULL,
    qty BIGINT NOT NULL CHECK (qty > 0),
    number BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('waiting', 'cancelled')),
    PRIMARY KEY (sku, orderid)
);

-- What a load of a product reads when backorders wait: one range of this
-- index, however many were ever placed.
CREATE INDEX backorders_waiting ON backorders (sku, number) WHERE state = 'waiting';
-- GET /orders/<orderid> and the SKUs of an order.
CREATE INDEX backorders_of_order ON backorders (orderid, sku);

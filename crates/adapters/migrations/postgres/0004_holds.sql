-- Checkout holds: units of a batch set aside for a hold until expires_at
-- (unix milliseconds, by the service's clock). One row per part: a hold's
-- line of one product, on one batch. A hold is its parts; it has no row
-- of its own. `state` says how a part ended: an active part past its
-- expiry has expired, with nothing to sweep.
CREATE TABLE hold_parts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hold_id TEXT COLLATE "C" NOT NULL,
    sku TEXT COLLATE "C" NOT NULL,
    batch_id BIGINT NOT NULL REFERENCES batches (id),
    qty BIGINT NOT NULL CHECK (qty > 0),
    expires_at BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'released', 'converted')),
    UNIQUE (hold_id, sku, batch_id)
);

-- What every load of a product sums per batch: its active parts not yet
-- expired, one range of this index. Ended parts leave it, and expired ones
-- sit below the range, so the sum costs what is live, not what piled up.
CREATE INDEX hold_parts_active ON hold_parts (batch_id, expires_at)
    WHERE state = 'active';

-- Requests sent with an Idempotency-Key: the key, what it was sent with
-- (method, path and a hash of the body), when it was claimed, and once
-- answered, the answer. A repeat with the key gets that answer; one that
-- arrives while the first runs waits for it. Rows older than a day may be
-- taken over by a new request with the same key.
CREATE TABLE idempotency_keys (
    key TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    status BIGINT NULL,
    body TEXT NULL
);

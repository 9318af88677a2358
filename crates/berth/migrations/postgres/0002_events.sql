-- Notification outbox: one row per (event, endpoint), written when the registry records a
-- change or serves a pull, deleted once the endpoint has accepted it. A delivery worker
-- claims the oldest row of its endpoint by setting a lease (lease_until, lease_owner), so
-- a crashed worker's claim simply expires and another node takes the row over.
--
-- seq is delivery order within an endpoint, so it must also be commit order: every
-- transaction that appends rows first takes the transaction-level advisory lock
-- OUTBOX_LOCK (src/meta/postgres_events.rs), held until it commits, so no row with a
-- lower seq can commit after one with a higher seq (a reader that has seen seq N has
-- seen, or will never see, everything below N).
CREATE TABLE outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint    TEXT COLLATE "C" NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_endpoint ON outbox (endpoint, seq);

-- Upload purging finds old sessions by age.
CREATE INDEX uploads_by_age ON uploads (created_at);

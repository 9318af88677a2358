-- Notification outbox: one row per (event, endpoint), written when the registry records a
-- change or serves a pull, deleted once the endpoint has accepted it. A delivery worker
-- claims the oldest row of its endpoint by setting a lease (lease_until, lease_owner), so
-- a crashed worker's claim simply expires and another node (or the restarted process)
-- takes the row over. With PostgreSQL the same claim becomes
-- `... FOR UPDATE SKIP LOCKED` on the head row.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint    TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_endpoint ON outbox (endpoint, seq);

-- Upload purging finds old sessions by age.
CREATE INDEX uploads_by_age ON uploads (created_at);

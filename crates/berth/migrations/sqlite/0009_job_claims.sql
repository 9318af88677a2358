-- Claims of background jobs that must run on one node at a time in a cluster (upload
-- purging, pull-through cache expiry, garbage collection): one holder per job until
-- `lease_until` (seconds since the epoch, by the database's clock, so nodes' clocks do
-- not matter). A dead holder's claim simply runs out. Runtime state: berth migrate does
-- not copy it. Expand-only.
CREATE TABLE job_claims (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    claimed_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL
) WITHOUT ROWID;

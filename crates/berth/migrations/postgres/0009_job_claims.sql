-- Claims of background jobs that must run on one node at a time in a cluster (see the
-- SQLite twin): times are the database server's clock. Expand-only.
CREATE TABLE job_claims (
    name        TEXT COLLATE "C" PRIMARY KEY,
    owner       TEXT NOT NULL,
    claimed_at  BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);

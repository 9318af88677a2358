-- Per-project storage quotas (Harbor's /api/v2.0/quotas): `hard` bytes (-1: no limit)
-- and `used`, the bytes of the distinct blobs linked into the project's repositories,
-- kept exact by the transactions that link and unlink blobs. A project without a row
-- has no quota (its usage is counted when it gets one). Copied by berth migrate.
-- Expand-only.
CREATE TABLE project_quotas (
    project_id  INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    hard        INTEGER NOT NULL,
    used        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- Which repositories link a digest: garbage collection's re-check and delete of a blob's
-- links, and whether a project holds a blob already (PostgreSQL has had it since 0001).
CREATE INDEX repository_blobs_by_digest ON repository_blobs (digest);

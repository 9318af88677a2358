-- Upload sessions that completed in the last minutes: a PUT repeated after its answer
-- was lost (a client retry, or a load balancer resending it to another node after the
-- first died) finds the session here and gets the same 201, instead of 404
-- BLOB_UPLOAD_UNKNOWN. Rows older than ten minutes are removed as new ones arrive.
-- Runtime state: berth migrate does not copy it. Expand-only.
CREATE TABLE completed_uploads (
    id           TEXT PRIMARY KEY,
    repository   TEXT NOT NULL,
    digest       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    completed_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX completed_uploads_by_age ON completed_uploads (completed_at);

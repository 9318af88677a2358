-- Upload sessions that completed in the last minutes (see the SQLite twin): a repeated
-- PUT gets the same 201. Expand-only.
CREATE TABLE completed_uploads (
    id           TEXT COLLATE "C" PRIMARY KEY,
    repository   TEXT COLLATE "C" NOT NULL,
    digest       TEXT COLLATE "C" NOT NULL,
    size         BIGINT NOT NULL,
    completed_at BIGINT NOT NULL
);
CREATE INDEX completed_uploads_by_age ON completed_uploads (completed_at);

-- Garbage collection runs and the API's schedule (see the SQLite twin). Expand-only.
CREATE TABLE gc_runs (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              TEXT COLLATE "C" NOT NULL,
    scheduled_for     BIGINT UNIQUE,
    parameters        TEXT NOT NULL,
    owner             TEXT NOT NULL,
    status            TEXT COLLATE "C" NOT NULL,
    started_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    deleted_blobs     BIGINT NOT NULL DEFAULT 0,
    deleted_manifests BIGINT NOT NULL DEFAULT 0,
    freed_bytes       BIGINT NOT NULL DEFAULT 0,
    error             TEXT,
    stop_requested    BOOLEAN NOT NULL DEFAULT false,
    log               TEXT NOT NULL DEFAULT ''
);
CREATE INDEX gc_runs_by_start ON gc_runs (started_at);
CREATE TABLE gc_schedule (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    kind       TEXT COLLATE "C" NOT NULL,
    cron       TEXT NOT NULL,
    parameters TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

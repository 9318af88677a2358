-- Garbage collection runs, as Harbor's GC history (/api/v2.0/system/gc): who ran what,
-- when, with which outcome and log; and the schedule set through the API (a row here
-- overrides the configuration's `storage.maintenance.garbagecollect`). Copied by berth
-- migrate. Expand-only.
CREATE TABLE gc_runs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind              TEXT NOT NULL,       -- MANUAL or SCHEDULE
    -- The schedule's tick a scheduled run is for: one run per tick per deployment.
    scheduled_for     INTEGER UNIQUE,
    parameters        TEXT NOT NULL,       -- JSON object
    owner             TEXT NOT NULL,
    status            TEXT NOT NULL,       -- Running, Success, Error, Stopped
    started_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    deleted_blobs     INTEGER NOT NULL DEFAULT 0,
    deleted_manifests INTEGER NOT NULL DEFAULT 0,
    freed_bytes       INTEGER NOT NULL DEFAULT 0,
    error             TEXT,
    stop_requested    INTEGER NOT NULL DEFAULT 0,  -- PUT /system/gc/{id}: stop it
    log               TEXT NOT NULL DEFAULT ''
);
CREATE INDEX gc_runs_by_start ON gc_runs (started_at);
CREATE TABLE gc_schedule (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    kind       TEXT NOT NULL,              -- Hourly, Daily, Weekly, Custom or None
    cron       TEXT NOT NULL,
    parameters TEXT NOT NULL,              -- JSON object
    updated_at INTEGER NOT NULL
);

-- Tag retention (Harbor's /api/v2.0/retentions): one policy per project, kept as the API
-- took it (JSON: algorithm, rules, trigger) and evaluated by the registry; `cron` is
-- its schedule ('' for none), read by every node's scheduler. Runs and their tasks (one
-- per repository, with the log of what was kept and what went) are the history.
-- `manifests.pulled_at`: the last time the manifest was pulled (a GET), written in
-- batches off the request path, for "most recently pulled" rules and the API's
-- pull_time. Copied by berth migrate. Expand-only.
CREATE TABLE retention_policies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL UNIQUE REFERENCES projects(id) ON DELETE CASCADE,
    policy      TEXT NOT NULL,
    cron        TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE retention_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    policy_id      INTEGER NOT NULL REFERENCES retention_policies(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,               -- MANUAL, SCHEDULE
    scheduled_for  INTEGER,
    dry_run        INTEGER NOT NULL,
    owner          TEXT NOT NULL,
    status         TEXT NOT NULL,               -- Running, Succeed, Error, Stopped
    stop_requested INTEGER NOT NULL DEFAULT 0,
    started_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    UNIQUE (policy_id, scheduled_for)
);
CREATE INDEX retention_runs_by_policy ON retention_runs (policy_id, id);
CREATE TABLE retention_tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES retention_runs(id) ON DELETE CASCADE,
    repository  TEXT NOT NULL,
    status      TEXT NOT NULL,
    total       INTEGER NOT NULL,
    retained    INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL,
    log         TEXT NOT NULL
);
CREATE INDEX retention_tasks_by_run ON retention_tasks (run_id, id);
ALTER TABLE manifests ADD COLUMN pulled_at INTEGER;

-- Tag retention and manifests' pull times (see the SQLite twin). Expand-only.
CREATE TABLE retention_policies (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  BIGINT NOT NULL UNIQUE REFERENCES projects(id) ON DELETE CASCADE,
    policy      TEXT NOT NULL,
    cron        TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE retention_runs (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    policy_id      BIGINT NOT NULL REFERENCES retention_policies(id) ON DELETE CASCADE,
    kind           TEXT COLLATE "C" NOT NULL,
    scheduled_for  BIGINT,
    dry_run        BOOLEAN NOT NULL,
    owner          TEXT NOT NULL,
    status         TEXT COLLATE "C" NOT NULL,
    stop_requested BOOLEAN NOT NULL DEFAULT false,
    started_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    UNIQUE (policy_id, scheduled_for)
);
CREATE INDEX retention_runs_by_policy ON retention_runs (policy_id, id);
CREATE TABLE retention_tasks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      BIGINT NOT NULL REFERENCES retention_runs(id) ON DELETE CASCADE,
    repository  TEXT COLLATE "C" NOT NULL,
    status      TEXT COLLATE "C" NOT NULL,
    total       BIGINT NOT NULL,
    retained    BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT NOT NULL,
    log         TEXT NOT NULL
);
CREATE INDEX retention_tasks_by_run ON retention_tasks (run_id, id);
ALTER TABLE manifests ADD COLUMN pulled_at BIGINT;

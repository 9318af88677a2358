-- Per-project storage quotas (see the SQLite twin). Expand-only.
CREATE TABLE project_quotas (
    project_id  BIGINT PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    hard        BIGINT NOT NULL,
    used        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

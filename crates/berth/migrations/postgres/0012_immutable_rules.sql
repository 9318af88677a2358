-- Immutable tag rules (see the SQLite twin). Expand-only.
CREATE TABLE immutable_rules (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    priority    BIGINT NOT NULL DEFAULT 0,
    disabled    BOOLEAN NOT NULL DEFAULT false,
    selectors   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX immutable_rules_by_project ON immutable_rules (project_id);

-- Immutable tag rules, as Harbor's (/api/v2.0/projects/{p}/immutabletagrules): a tag of
-- the project whose repository and name match an enabled rule cannot be moved to
-- another digest or deleted. The selectors are kept as the API took them (JSON), matched
-- by the registry. Go with their project. Copied by berth migrate. Expand-only.
CREATE TABLE immutable_rules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    priority    INTEGER NOT NULL DEFAULT 0,
    disabled    INTEGER NOT NULL DEFAULT 0,
    selectors   TEXT NOT NULL,             -- {"tag_selectors":[...],"scope_selectors":{...}}
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX immutable_rules_by_project ON immutable_rules (project_id);

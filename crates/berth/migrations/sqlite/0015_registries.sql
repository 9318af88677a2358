-- Upstream registries (Harbor's /api/v2.0/registries), kept as the API took them:
-- adapter `kind`, base URL, optional basic credentials, TLS settings, and the last
-- health check's verdict (`status`: healthy, unhealthy or unknown; `checked_at` NULL
-- until the first check). A project with `registry_id` is a proxy cache of that
-- registry; a registry still in use is not deleted (no cascade). Copied by berth
-- migrate. Expand-only.
CREATE TABLE registries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    url             TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    access_key      TEXT,
    access_secret   TEXT,
    insecure        INTEGER NOT NULL DEFAULT 0,
    ca_certificate  TEXT,
    status          TEXT NOT NULL DEFAULT 'unknown',
    checked_at      INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
ALTER TABLE projects ADD COLUMN registry_id INTEGER REFERENCES registries(id);
-- Deleting a registry looks for the projects bound to it.
CREATE INDEX projects_by_registry ON projects (registry_id) WHERE registry_id IS NOT NULL;

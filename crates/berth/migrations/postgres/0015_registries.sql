-- Upstream registries and proxy-cache projects (see the SQLite twin). Expand-only.
CREATE TABLE registries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL UNIQUE,
    kind            TEXT COLLATE "C" NOT NULL,
    url             TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    access_key      TEXT,
    access_secret   TEXT,
    insecure        BOOLEAN NOT NULL DEFAULT false,
    ca_certificate  TEXT,
    status          TEXT COLLATE "C" NOT NULL DEFAULT 'unknown',
    checked_at      BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
ALTER TABLE projects ADD COLUMN registry_id BIGINT REFERENCES registries(id);
CREATE INDEX projects_by_registry ON projects (registry_id) WHERE registry_id IS NOT NULL;

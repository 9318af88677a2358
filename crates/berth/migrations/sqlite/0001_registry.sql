-- Core registry metadata: repositories, blob links, manifests, tags, upload sessions.
CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- Every blob committed to storage, once, by digest.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Which repositories may serve which blobs (a push or a mount links a blob).
CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories(id),
    digest        TEXT NOT NULL REFERENCES blobs(digest),
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;

-- Manifests, stored byte for byte. artifact_type is the referrers-API artifact type
-- (the manifest's own, else the config media type for images).
CREATE TABLE manifests (
    repository_id INTEGER NOT NULL REFERENCES repositories(id),
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    size          INTEGER NOT NULL,
    content       BLOB NOT NULL,
    subject       TEXT,
    artifact_type TEXT,
    annotations   TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;

-- What each manifest references (blobs and child manifests): the roots of garbage collection.
CREATE TABLE manifest_references (
    repository_id   INTEGER NOT NULL,
    manifest_digest TEXT NOT NULL,
    child_digest    TEXT NOT NULL,
    child_is_manifest INTEGER NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, child_digest)
) WITHOUT ROWID;
CREATE INDEX manifest_references_by_child ON manifest_references (child_digest);

CREATE TABLE tags (
    repository_id INTEGER NOT NULL REFERENCES repositories(id),
    name          TEXT NOT NULL,
    digest        TEXT NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name)
) WITHOUT ROWID;
CREATE INDEX tags_by_digest ON tags (repository_id, digest);

-- Upload sessions, so that any node (or the same node after a restart) can continue one.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    repository  TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

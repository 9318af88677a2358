-- Core registry metadata: repositories, blob links, manifests, tags, upload sessions.
-- The PostgreSQL twin of migrations/sqlite/0001_registry.sql (same tables, same meaning).
--
-- Types: ids, sizes and counts are BIGINT (a layer may exceed 2 GiB); times are seconds
-- since the epoch in BIGINT, as the SQLite schema stores them (INTEGER there is 64-bit).
-- Every text column that is compared, sorted or paged on (names, tags, digests) is
-- COLLATE "C": the API lists tags and repositories in byte order, `last=` pages by byte
-- comparison, and delete_manifest compares the tags it reads with a byte-sorted list.
-- With the column's collation "C", the indexes are in that order too, whatever locale
-- the database was created with.
CREATE TABLE repositories (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- Every blob committed to storage, once, by digest.
CREATE TABLE blobs (
    digest      TEXT COLLATE "C" PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Which repositories may serve which blobs (a push or a mount links a blob).
CREATE TABLE repository_blobs (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest        TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
-- Garbage collection and known_blob find a blob's links by digest.
CREATE INDEX repository_blobs_by_digest ON repository_blobs (digest);

-- Manifests, stored byte for byte. artifact_type is the referrers-API artifact type
-- (the manifest's own, else the config media type for images).
CREATE TABLE manifests (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    digest        TEXT COLLATE "C" NOT NULL,
    media_type    TEXT NOT NULL,
    size          BIGINT NOT NULL,
    content       BYTEA NOT NULL,
    subject       TEXT COLLATE "C",
    artifact_type TEXT,
    annotations   TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repository_id, subject) WHERE subject IS NOT NULL;

-- What each manifest references (blobs and child manifests): the roots of garbage collection.
CREATE TABLE manifest_references (
    repository_id     BIGINT NOT NULL,
    manifest_digest   TEXT COLLATE "C" NOT NULL,
    child_digest      TEXT COLLATE "C" NOT NULL,
    child_is_manifest BOOLEAN NOT NULL,
    PRIMARY KEY (repository_id, manifest_digest, child_digest)
);
CREATE INDEX manifest_references_by_child ON manifest_references (child_digest);

CREATE TABLE tags (
    repository_id BIGINT NOT NULL REFERENCES repositories(id),
    name          TEXT COLLATE "C" NOT NULL,
    digest        TEXT COLLATE "C" NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_by_digest ON tags (repository_id, digest);

-- Upload sessions, so that any node (or the same node after a restart) can continue one.
CREATE TABLE uploads (
    id          TEXT COLLATE "C" PRIMARY KEY,
    repository  TEXT COLLATE "C" NOT NULL,
    algorithm   TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

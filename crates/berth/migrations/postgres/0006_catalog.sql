-- The Harbor-style catalog (src/meta/postgres_catalog.rs): artifacts listed newest first,
-- a repository's last change, and the children of an index in their order. Expand-only.

-- An artifact page walks this index in its order (created_at DESC, digest), and a
-- repository's newest manifest is its first entry.
CREATE INDEX manifests_by_time ON manifests (repository_id, created_at DESC, digest);
-- A repository's newest tag.
CREATE INDEX tags_by_time ON tags (repository_id, updated_at);

-- Where each reference stands in its manifest (config, layers, then an index's
-- entries, counted from 0), so an index's children list in their order.
--
-- The SQLite migration also backfills this column for manifests stored before it. No
-- PostgreSQL database holds such manifests: the PostgreSQL schema was introduced after
-- this migration, so 0001..0007 always run together on an empty database, and there is
-- nothing to backfill. (Rows copied in from elsewhere with a NULL position list after
-- the placed ones, by digest, as on SQLite.)
ALTER TABLE manifest_references ADD COLUMN position BIGINT;

-- The Harbor-style catalog (src/meta/sqlite_catalog.rs): artifacts listed newest first,
-- a repository's last change, and the children of an index in their order. Expand-only.

-- An artifact page walks this index in its order (created_at DESC, digest), and a
-- repository's newest manifest is its first entry.
CREATE INDEX manifests_by_time ON manifests (repository_id, created_at DESC, digest);
-- A repository's newest tag.
CREATE INDEX tags_by_time ON tags (repository_id, updated_at);

-- Where each reference stands in its manifest (config, layers, then an index's
-- entries, counted from 0), so an index's children list in their order. NULL for rows
-- written before this migration that the backfill below does not reach (an image's
-- blobs: their order is not asked for).
ALTER TABLE manifest_references ADD COLUMN position INTEGER;

-- Children of indexes stored before: their place in the index's `manifests` array (an
-- index has no config or layers, so that is the same count as above). Content SQLite's
-- JSON parser rejects, and entries that are not objects, are skipped, never an error.
UPDATE manifest_references SET position = (
    SELECT MIN(CAST(j.key AS INTEGER))
    FROM manifests m,
         json_each(CASE WHEN json_valid(CAST(m.content AS TEXT))
                        THEN CAST(m.content AS TEXT) ELSE '{}' END, '$.manifests') j
    WHERE m.repository_id = manifest_references.repository_id
      AND m.digest = manifest_references.manifest_digest
      AND CASE WHEN j.type = 'object' THEN j.value ->> '$.digest' END
          = manifest_references.child_digest)
WHERE child_is_manifest = 1;

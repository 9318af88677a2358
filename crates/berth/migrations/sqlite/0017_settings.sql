-- Deployment-wide settings the database decides once for every node (see meta::Settings
-- in the code). `blob_keys` is written 'on' when this database is created by a release
-- that writes blobs at keys of their own; a database an older release created has no
-- row (off), so its nodes keep writing by digest until the operator says otherwise
-- (storage.s3.blobkeys). Runtime state: berth migrate does not copy it. Expand-only.
CREATE TABLE settings (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

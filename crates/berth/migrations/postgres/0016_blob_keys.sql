-- A blob's own object store key (see the SQLite twin). Expand-only.
ALTER TABLE blobs ADD COLUMN storage_key TEXT COLLATE "C";
CREATE UNIQUE INDEX blobs_by_storage_key ON blobs (storage_key) WHERE storage_key IS NOT NULL;

-- Where a blob's bytes are, when not at the digest's own path: an object store key
-- (`objects/...`) that a push wrote its upload to directly, so the store writes each
-- layer once instead of copying it into the digest's key at commit. NULL for every blob
-- committed by digest (all blobs before this migration; always on the filesystem).
-- The first key recorded for a digest wins. Expand-only.
ALTER TABLE blobs ADD COLUMN storage_key TEXT;
CREATE UNIQUE INDEX blobs_by_storage_key ON blobs (storage_key) WHERE storage_key IS NOT NULL;

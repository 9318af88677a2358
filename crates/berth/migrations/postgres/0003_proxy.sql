-- Pull-through cache (proxy) bookkeeping: when each cached manifest or blob link of a
-- repository was last fetched or served, for proxy.ttl expiry. Only written in proxy mode.
CREATE TABLE proxy_cache (
    repository  TEXT COLLATE "C" NOT NULL,
    digest      TEXT COLLATE "C" NOT NULL,
    is_manifest BOOLEAN NOT NULL,
    last_used   BIGINT NOT NULL,
    PRIMARY KEY (repository, digest, is_manifest)
);
CREATE INDEX proxy_cache_by_last_used ON proxy_cache (last_used);

-- `berth migrate` runs that wrote into this database (see the PostgreSQL twin of this
-- migration; migrate writes only into PostgreSQL today, the table keeps both schemas
-- the same). Expand-only.
CREATE TABLE migrate_runs (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    finished_at INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    summary     TEXT NOT NULL
);

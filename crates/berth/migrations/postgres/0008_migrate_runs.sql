-- `berth migrate` runs that wrote into this database: which source, when, and the
-- fingerprint of the registry content the run left (counts and latest ids and times).
-- A later run from the same source replaces that content only while the fingerprint
-- still matches, so content a serving cluster wrote since is never overwritten by
-- accident. Expand-only: older versions ignore the table.
CREATE TABLE migrate_runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      TEXT NOT NULL,
    finished_at BIGINT NOT NULL,
    fingerprint TEXT NOT NULL,
    summary     TEXT NOT NULL
);

-- Per-project allowlist of client networks that may push and delete (comma-separated
-- CIDRs; empty: only the global auth.berth.pushnetworks applies). Expand-only.
ALTER TABLE projects ADD COLUMN push_networks TEXT NOT NULL DEFAULT '';

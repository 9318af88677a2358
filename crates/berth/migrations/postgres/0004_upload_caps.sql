-- Open upload sessions are capped per repository (limits.repositoryuploadsessions):
-- counting them must not scan every session.
CREATE INDEX uploads_by_repository ON uploads (repository);

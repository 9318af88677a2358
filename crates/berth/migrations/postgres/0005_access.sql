-- Multi-tenancy metadata (see src/meta/access.rs): users, projects and their members,
-- robot accounts, token signing keys, the audit log. Rows only: auth/ decides who may do
-- what. Secrets are stored hashed. Ids are identity columns, whose sequences never hand
-- out a number twice, so that an id, once handed out (API paths, tokens, the audit
-- record), never names another row later.

-- Local and directory (LDAP) users. Names compare exactly (the caller lower-cases them).
-- source is 'local' (password_hash: bcrypt) or 'ldap' (password_hash NULL: the
-- directory checks the password).
CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      TEXT COLLATE "C" NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    realname      TEXT NOT NULL,
    comment       TEXT NOT NULL,
    admin         BOOLEAN NOT NULL,
    source        TEXT NOT NULL,
    password_hash TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Projects: the first path component of a repository name. A repository belongs to a
-- project by name alone (`<name>/...`), so no foreign key joins the two. owner_id is
-- the creating user, NULL once that user is deleted.
CREATE TABLE projects (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    public      BOOLEAN NOT NULL,
    owner_id    BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- Deleting a user finds the projects they own.
CREATE INDEX projects_by_owner ON projects (owner_id) WHERE owner_id IS NOT NULL;

-- Project members: a user (entity_type 'u', user_id) or a directory group (entity_type
-- 'g', group_name), with Harbor's role id. One membership per project and entity (NULLs
-- are distinct in a UNIQUE constraint, so each pair only constrains its own kind).
CREATE TABLE members (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    entity_type TEXT NOT NULL CHECK (entity_type IN ('u', 'g')),
    user_id     BIGINT REFERENCES users(id) ON DELETE CASCADE,
    group_name  TEXT COLLATE "C",
    role        BIGINT NOT NULL,
    CHECK ((entity_type = 'u') = (user_id IS NOT NULL)
       AND (entity_type = 'g') = (group_name IS NOT NULL)),
    UNIQUE (project_id, user_id),
    UNIQUE (project_id, group_name)
);
-- A user's memberships (visible projects; the cascade when the user is deleted).
CREATE INDEX members_by_user ON members (user_id) WHERE user_id IS NOT NULL;

-- Robot accounts: project robots (project_id set) and system robots (project_id NULL).
-- permissions is JSON whose shape belongs to auth/; creator is text (`user:alice`), for
-- the record only, so deleting the creator keeps the robot.
CREATE TABLE robots (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    description TEXT NOT NULL,
    project_id  BIGINT REFERENCES projects(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL,
    expires_at  BIGINT,
    permissions TEXT NOT NULL,
    creator     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- Names are unique per project and among system robots: NULLs are distinct in a UNIQUE
-- index, so system robots count as project 0 (project ids start at 1). Lookups by name
-- must spell the same expression to use it.
CREATE UNIQUE INDEX robots_by_name ON robots (COALESCE(project_id, 0), name);
-- A project's robots, or the system robots (listing; the cascade when the project is
-- deleted).
CREATE INDEX robots_by_project ON robots (project_id);

-- The token service's signing keys, shared by every node. At most one is current
-- (retired_at NULL); retired keys still verify tokens they signed until dropped. seq
-- orders keys stored in the same second. Writers serialize on an advisory lock
-- (src/meta/postgres_access.rs), and the partial unique index below makes a second
-- current key impossible whatever a writer does.
CREATE TABLE signing_keys (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kid         TEXT NOT NULL UNIQUE,
    private_pem TEXT NOT NULL,
    cert_pem    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;

-- The audit log, append-only but for pruning, listed newest first: (time_ms DESC,
-- id DESC). Each index ends with id, so scanning it backwards yields exactly that order.
CREATE TABLE audit_log (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ms       BIGINT NOT NULL,
    principal     TEXT COLLATE "C" NOT NULL,
    client        TEXT NOT NULL,
    resource_type TEXT COLLATE "C" NOT NULL,
    resource      TEXT NOT NULL,
    project       TEXT COLLATE "C",
    operation     TEXT COLLATE "C" NOT NULL,
    result        TEXT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (time_ms, id);
CREATE INDEX audit_log_by_project ON audit_log (project, time_ms, id) WHERE project IS NOT NULL;
CREATE INDEX audit_log_by_principal ON audit_log (principal, time_ms, id);

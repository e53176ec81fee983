-- Identity and access: one users table for people (platform roles or tenant memberships),
-- MFA, session families with rotating refresh tokens, signing keys, API keys, invitations,
-- custom roles and login throttling.
ALTER TABLE platform_users RENAME TO users;
ALTER TABLE users RENAME COLUMN roles TO platform_roles;
ALTER TABLE users ADD COLUMN totp_secret BLOB;
ALTER TABLE users ADD COLUMN totp_enabled_at TEXT;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;

DROP TABLE platform_sessions;

CREATE TABLE recovery_codes (
    user_id    TEXT NOT NULL REFERENCES users (id),
    code_hash  TEXT NOT NULL,
    used_at    TEXT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE memberships (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    roles       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE roles (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    permissions TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT roles_tenant_name_key UNIQUE (tenant_id, name)
);

CREATE TABLE session_families (
    id               TEXT PRIMARY KEY NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users (id),
    scope_tenant_id  TEXT REFERENCES tenants (id),
    amr              TEXT NOT NULL,
    mfa_at           TEXT,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    revoked_at       TEXT,
    revoked_reason   TEXT
);
CREATE INDEX session_families_user_idx ON session_families (user_id);

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    family_id   TEXT NOT NULL REFERENCES session_families (id),
    issued_at   TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    spent_at    TEXT
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    private_key  BLOB NOT NULL,
    public_key   BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    retired_at   TEXT
);

CREATE TABLE api_key_directory (
    key_id           TEXT PRIMARY KEY NOT NULL,
    owner_tenant_id  TEXT NOT NULL REFERENCES tenants (id)
);

CREATE TABLE api_keys (
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    environment          TEXT NOT NULL,
    id                   TEXT NOT NULL,
    key_id               TEXT NOT NULL,
    secret_hash          TEXT NOT NULL,
    previous_secret_hash TEXT,
    previous_valid_until TEXT,
    role                 TEXT,
    permissions          TEXT NOT NULL,
    storefront_ids       TEXT NOT NULL,
    description          TEXT NOT NULL,
    expires_at           TEXT,
    last_used_at         TEXT,
    revoked_at           TEXT,
    created_by           TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT api_keys_key_id_key UNIQUE (key_id)
);

CREATE TABLE invitations (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    email        TEXT NOT NULL,
    roles        TEXT NOT NULL,
    token_hash   TEXT NOT NULL,
    invited_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    accepted_at  TEXT,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT invitations_token_hash_key UNIQUE (token_hash)
);

CREATE TABLE login_throttle (
    throttle_key     TEXT PRIMARY KEY NOT NULL,
    failures         INTEGER NOT NULL,
    last_failure_at  TEXT NOT NULL,
    locked_until     TEXT
);

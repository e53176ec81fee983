-- Identity and access: one users table for people (platform roles or tenant memberships),
-- MFA, session families with rotating refresh tokens, signing keys, API keys, invitations,
-- custom roles and login throttling.
ALTER TABLE platform_users RENAME TO users;
ALTER TABLE users RENAME CONSTRAINT platform_users_email_key TO users_email_key;
ALTER TABLE users RENAME COLUMN roles TO platform_roles;
ALTER TABLE users ADD COLUMN totp_secret BYTEA;
ALTER TABLE users ADD COLUMN totp_enabled_at TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;

DROP TABLE platform_sessions;

CREATE TABLE recovery_codes (
    user_id    TEXT NOT NULL REFERENCES users (id),
    code_hash  TEXT NOT NULL,
    used_at    TIMESTAMPTZ,
    PRIMARY KEY (user_id, code_hash)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON recovery_codes TO azotte_app;

-- Tenant-owned.
CREATE TABLE memberships (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    roles       JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON memberships TO azotte_app;
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));

-- Tenant-owned.
CREATE TABLE roles (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    permissions JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT roles_tenant_name_key UNIQUE (tenant_id, name)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON roles TO azotte_app;
ALTER TABLE roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON roles
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));

-- Authentication registry (read before any tenant scope exists).
CREATE TABLE session_families (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users (id),
    scope_tenant_id  TEXT REFERENCES tenants (id),
    amr              JSONB NOT NULL,
    mfa_at           TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    revoked_at       TIMESTAMPTZ,
    revoked_reason   TEXT
);
CREATE INDEX session_families_user_idx ON session_families (user_id);
GRANT SELECT, INSERT, UPDATE ON session_families TO azotte_app;

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL REFERENCES session_families (id),
    issued_at   TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    spent_at    TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
GRANT SELECT, INSERT, UPDATE, DELETE ON refresh_tokens TO azotte_app;

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    private_key  BYTEA NOT NULL,
    public_key   BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    retired_at   TIMESTAMPTZ
);
GRANT SELECT, INSERT, UPDATE ON signing_keys TO azotte_app;

-- Maps an API key's public id to its tenant, so a key presented with another tenant's x-tn
-- is told apart from an unknown key. Holds no secret and no tenant data.
CREATE TABLE api_key_directory (
    key_id           TEXT PRIMARY KEY,
    owner_tenant_id  TEXT NOT NULL REFERENCES tenants (id)
);
GRANT SELECT, INSERT ON api_key_directory TO azotte_app;

-- Tenant-owned; the policy is per tenant because authentication looks a key up before it
-- knows the key's environment; queries filter the environment themselves.
CREATE TABLE api_keys (
    tenant_id            TEXT NOT NULL REFERENCES tenants (id),
    environment          TEXT NOT NULL,
    id                   TEXT NOT NULL,
    key_id               TEXT NOT NULL,
    secret_hash          TEXT NOT NULL,
    previous_secret_hash TEXT,
    previous_valid_until TIMESTAMPTZ,
    role                 TEXT,
    permissions          JSONB NOT NULL,
    storefront_ids       JSONB NOT NULL,
    description          TEXT NOT NULL,
    expires_at           TIMESTAMPTZ,
    last_used_at         TIMESTAMPTZ,
    revoked_at           TIMESTAMPTZ,
    created_by           TEXT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment, id),
    CONSTRAINT api_keys_key_id_key UNIQUE (key_id)
);
GRANT SELECT, INSERT, UPDATE ON api_keys TO azotte_app;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));

-- Tenant-owned.
CREATE TABLE invitations (
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    email        TEXT NOT NULL,
    roles        JSONB NOT NULL,
    token_hash   TEXT NOT NULL,
    invited_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    accepted_at  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT invitations_token_hash_key UNIQUE (token_hash)
);
GRANT SELECT, INSERT, UPDATE ON invitations TO azotte_app;
ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invitations
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));

CREATE TABLE login_throttle (
    throttle_key     TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL,
    last_failure_at  TIMESTAMPTZ NOT NULL,
    locked_until     TIMESTAMPTZ
);
GRANT SELECT, INSERT, UPDATE, DELETE ON login_throttle TO azotte_app;

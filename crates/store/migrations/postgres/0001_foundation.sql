-- The service runs as azotte_app, a role that owns nothing, so row-level security binds it.
-- Creating it tolerates a concurrent creation by another database of the same cluster.
DO $$
BEGIN
    CREATE ROLE azotte_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'azotte_app', 'MEMBER') THEN
        EXECUTE format('GRANT azotte_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO azotte_app;
GRANT SELECT ON _sqlx_migrations TO azotte_app;

-- Platform tables: the tenant registry and platform operators.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT tenants_slug_key UNIQUE (slug)
);
GRANT SELECT, INSERT, UPDATE ON tenants TO azotte_app;

-- Tenant-owned: every tenant has development, staging and production.
CREATE TABLE environments (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    environment TEXT NOT NULL CHECK (environment IN ('development', 'staging', 'production')),
    mode        TEXT NOT NULL CHECK (mode IN ('test', 'live')),
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, environment)
);
GRANT SELECT, INSERT ON environments TO azotte_app;
ALTER TABLE environments ENABLE ROW LEVEL SECURITY;
ALTER TABLE environments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON environments
    USING (tenant_id = current_setting('azotte.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('azotte.tenant_id', true));

CREATE TABLE platform_users (
    id                    TEXT PRIMARY KEY,
    email                 TEXT,
    password_hash         TEXT,
    bootstrap_secret_hash TEXT,
    roles                 JSONB NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    CONSTRAINT platform_users_email_key UNIQUE (email)
);
GRANT SELECT, INSERT, UPDATE ON platform_users TO azotte_app;

CREATE TABLE platform_sessions (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES platform_users (id),
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    CONSTRAINT platform_sessions_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX platform_sessions_expires_idx ON platform_sessions (expires_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON platform_sessions TO azotte_app;

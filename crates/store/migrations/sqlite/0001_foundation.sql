-- Platform tables: the tenant registry and platform operators.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY NOT NULL,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    CONSTRAINT tenants_slug_key UNIQUE (slug)
);

-- Tenant-owned: every tenant has development, staging and production.
CREATE TABLE environments (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    environment TEXT NOT NULL CHECK (environment IN ('development', 'staging', 'production')),
    mode        TEXT NOT NULL CHECK (mode IN ('test', 'live')),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, environment)
);

CREATE TABLE platform_users (
    id                    TEXT PRIMARY KEY NOT NULL,
    email                 TEXT,
    password_hash         TEXT,
    bootstrap_secret_hash TEXT,
    roles                 TEXT NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    CONSTRAINT platform_users_email_key UNIQUE (email)
);

CREATE TABLE platform_sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    token_hash  TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES platform_users (id),
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT,
    CONSTRAINT platform_sessions_token_hash_key UNIQUE (token_hash)
);
CREATE INDEX platform_sessions_expires_idx ON platform_sessions (expires_at);

//! Authentication: the bootstrap administrator, password login and session tokens.
//!
//! Passwords are hashed with argon2id off the async runtime. Session tokens are 32 random
//! bytes; only their SHA-256 is stored, which is enough for a secret with that much entropy
//! and keeps the per-request check cheap.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use azotte_domain::email::Email;
use azotte_domain::tenant::Environment;
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_store::auth::{self as store_auth, EnterTenantError, NewSession};
use azotte_store::{PlatformScope, TenantScope};
use chrono::Duration;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{Ctx, Result, ServiceError};

/// How long a platform session lasts.
pub const SESSION_TTL: Duration = Duration::hours(12);
/// Prefix of session tokens, so they are recognisable in secret scanners.
pub const SESSION_TOKEN_PREFIX: &str = "azs_";
/// Prefix of bootstrap secrets.
pub const BOOTSTRAP_PREFIX: &str = "azboot_";

/// A freshly opened session: the token is shown to the caller once.
#[derive(Debug)]
pub struct IssuedSession {
    pub token: Secret<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub user_id: String,
}

fn random_token(prefix: &str) -> Secret<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(format!("{prefix}{}", hex::encode(bytes)))
}

/// SHA-256 of a high-entropy token, hex encoded: what is stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn validate_password(field: &str, p: &str) -> std::result::Result<(), FieldError> {
    let n = p.chars().count();
    if n < 12 {
        return Err(FieldError::new(field, "password_too_short", "must be at least 12 characters long"));
    }
    if n > 512 {
        return Err(FieldError::new(field, "password_too_long", "must be at most 512 characters long"));
    }
    Ok(())
}

async fn hash_password(password: Secret<String>) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.expose().as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(ServiceError::internal)?
    .map_err(|e| ServiceError::Internal(e.to_string().into()))
}

/// A hash of a password nobody has, verified when the email is unknown so that a login for an
/// unknown account takes as long as one with a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"no password matches this one", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

async fn verify_password(password: Secret<String>, hash: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let stored = hash.as_deref().unwrap_or_else(|| dummy_hash());
        let Ok(parsed) = PasswordHash::new(stored) else { return false };
        let ok = Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok();
        ok && hash.is_some()
    })
    .await
    .map_err(ServiceError::internal)
}

/// On an installation with no platform user, creates the first administrator and returns the
/// one-time bootstrap secret to show on the terminal. `None` when already initialised.
pub async fn bootstrap(ctx: &Ctx) -> Result<Option<Secret<String>>> {
    let secret = random_token(BOOTSTRAP_PREFIX);
    let created =
        store_auth::bootstrap_admin_if_empty(&ctx.db, &token_hash(secret.expose()), ctx.clock.now()).await?;
    Ok(created.map(|_| secret))
}

fn new_session() -> (Secret<String>, String) {
    let token = random_token(SESSION_TOKEN_PREFIX);
    let hash = token_hash(token.expose());
    (token, hash)
}

/// Exchanges the bootstrap secret for an email and password, and opens a first session.
pub async fn exchange_bootstrap(
    ctx: &Ctx,
    bootstrap_secret: Secret<String>,
    email: &str,
    password: Secret<String>,
) -> Result<IssuedSession> {
    let mut errors = ValidationErrors::default();
    let email = errors.check(Email::parse("email", email));
    errors.check(validate_password("password", password.expose()));
    errors.finish()?;
    let Some(email) = email else { unreachable!("errors were checked") };

    let password_hash = hash_password(password).await?;
    let (token, hash) = new_session();
    let now = ctx.clock.now();
    let expires_at = now + SESSION_TTL;
    let exchanged = store_auth::exchange_bootstrap_secret(
        &ctx.db,
        &token_hash(bootstrap_secret.expose()),
        email.as_str(),
        &password_hash,
        &NewSession { token_hash: &hash, now, expires_at },
    )
    .await?;
    let (user, _) = exchanged.ok_or(ServiceError::Unauthenticated)?;
    tracing::info!(user_id = %user.id, "bootstrap secret exchanged for a password");
    Ok(IssuedSession { token, expires_at, user_id: user.id.to_string() })
}

/// Password login for platform users. Every failure is the same `Unauthenticated`.
pub async fn login(ctx: &Ctx, email: &str, password: Secret<String>) -> Result<IssuedSession> {
    let Ok(email) = Email::parse("email", email) else { return Err(ServiceError::Unauthenticated) };
    let found = store_auth::user_by_email(&ctx.db, email.as_str()).await?;
    let (user, hash) = match found {
        Some((u, h)) if u.active => (Some(u), h),
        _ => (None, None),
    };
    if !verify_password(password, hash).await? {
        return Err(ServiceError::Unauthenticated);
    }
    let Some(user) = user else { return Err(ServiceError::Unauthenticated) };
    let (token, hash) = new_session();
    let now = ctx.clock.now();
    let expires_at = now + SESSION_TTL;
    store_auth::open_session(&ctx.db, user.id, &NewSession { token_hash: &hash, now, expires_at }).await?;
    Ok(IssuedSession { token, expires_at, user_id: user.id.to_string() })
}

/// Ends a session.
pub async fn logout(ctx: &Ctx, token: &str) -> Result<()> {
    store_auth::revoke_session(&ctx.db, &token_hash(token), ctx.clock.now()).await?;
    Ok(())
}

/// The platform scope of a bearer token, or `Unauthenticated`.
pub async fn authenticate(ctx: &Ctx, token: &str) -> Result<PlatformScope> {
    if !token.starts_with(SESSION_TOKEN_PREFIX) {
        return Err(ServiceError::Unauthenticated);
    }
    store_auth::authenticate_session(&ctx.db, &token_hash(token), ctx.clock.now())
        .await?
        .ok_or(ServiceError::Unauthenticated)
}

/// Enters a tenant environment named by `x-tn` (id or slug) and `x-env`.
pub async fn enter_tenant(
    ctx: &Ctx,
    platform: &PlatformScope,
    tenant_ref: &str,
    environment: Environment,
) -> Result<TenantScope> {
    match store_auth::enter_tenant_as_platform(&ctx.db, platform, tenant_ref, environment).await {
        Ok((scope, _)) => Ok(scope),
        Err(EnterTenantError::NotFound) => Err(ServiceError::NotFound { resource: "tenant" }),
        Err(EnterTenantError::Suspended) => Err(ServiceError::Forbidden {
            code: "tenant_suspended",
            message: "the tenant is suspended".into(),
        }),
        Err(EnterTenantError::Store(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules() {
        assert!(validate_password("password", "short").is_err());
        assert!(validate_password("password", "long enough pass").is_ok());
        assert!(validate_password("password", &"x".repeat(513)).is_err());
    }

    #[test]
    fn tokens_are_prefixed_and_hashes_stable() {
        let t = random_token(SESSION_TOKEN_PREFIX);
        assert!(t.expose().starts_with("azs_") && t.expose().len() == 4 + 64);
        assert_eq!(token_hash("abc"), token_hash("abc"));
        assert_ne!(token_hash("abc"), token_hash("abd"));
    }
}

//! Authentication: passwords, sessions (JWT access tokens with rotating refresh tokens), login
//! throttling, and turning a bearer credential into a scope.

use std::net::IpAddr;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use azotte_crypto::jwt::{self, Claims, JwtError, Validation};
use azotte_crypto::tokens::{self, parse_api_key, sha256_hex, HashedApiKey};
use azotte_domain::email::Email;
use azotte_domain::id::{SessionId, UserId};
use azotte_domain::tenant::Environment;
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_domain::{Principal, PrincipalKind};
use azotte_store::auth as store_auth;
use azotte_store::journal;
use azotte_store::sessions::{self, Family, NewFamily, RefreshOutcome};
use azotte_store::users::User;
use azotte_store::{PlatformScope, TenantScope};
use chrono::{DateTime, Duration, Utc};

use crate::mail::Mail;
use crate::{mfa, Ctx, Result, ServiceError};

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::minutes(15);
/// Lifetime of one refresh token (each refresh issues a new one).
pub const REFRESH_TTL: Duration = Duration::days(14);
/// Longest a session family lives, however often it is refreshed.
pub const SESSION_MAX: Duration = Duration::days(30);
/// The `aud` of access tokens.
pub const AUDIENCE: &str = "azotte-api";
/// Prefix of bootstrap secrets and refresh tokens, so they are recognisable in secret scanners.
pub const BOOTSTRAP_PREFIX: &str = "azboot_";
const REFRESH_PREFIX: &str = "azr_";

/// Tokens handed to a client after login or refresh.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: Secret<String>,
    pub refresh_token: Secret<String>,
    pub expires_at: DateTime<Utc>,
    pub user_id: UserId,
    pub tenant_id: Option<String>,
}

fn argon(ctx: &Ctx) -> Result<Argon2<'_>> {
    Argon2::new_with_secret(ctx.keys.pepper.expose(), Algorithm::Argon2id, Version::V0x13, Params::default())
        .map_err(|e| ServiceError::Internal(e.to_string().into()))
}

const COMMON_PASSWORDS: &[&str] = &[
    "123456789012",
    "1234567890123",
    "password1234",
    "password12345",
    "passwordpassword",
    "qwertyuiopas",
    "qwerty123456",
    "iloveyou1234",
    "111111111111",
    "000000000000",
    "aaaaaaaaaaaa",
    "abcdefghijkl",
    "abc123abc123",
    "letmein12345",
    "welcome12345",
    "adminadmin12",
    "administrator",
    "changeme1234",
    "trustno1trustno1",
    "1q2w3e4r5t6y",
    "qazwsxedcrfv",
    "p@ssw0rd1234",
    "passw0rd1234",
    "monkey123456",
    "dragon123456",
    "football1234",
    "baseball1234",
    "superman1234",
    "sunshine1234",
    "princess1234",
    "azerty123456",
    "correcthorse",
    "password123!",
    "welcome2024!",
    "welcome2025!",
    "welcome2026!",
];

/// Password rules: 12 to 512 characters, not a well-known password, not one repeated character.
pub fn validate_password(field: &str, p: &str) -> std::result::Result<(), FieldError> {
    let n = p.chars().count();
    if n < 12 {
        return Err(FieldError::new(field, "password_too_short", "must be at least 12 characters long"));
    }
    if n > 512 {
        return Err(FieldError::new(field, "password_too_long", "must be at most 512 characters long"));
    }
    let lower = p.to_lowercase();
    let first = lower.chars().next();
    if COMMON_PASSWORDS.contains(&lower.as_str()) || lower.chars().all(|c| Some(c) == first) {
        return Err(FieldError::new(field, "password_too_common", "is too common; choose another"));
    }
    Ok(())
}

/// Hashes a password with argon2id and the installation's pepper, off the async runtime.
pub async fn hash_password(ctx: &Ctx, password: Secret<String>) -> Result<String> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon(&ctx)?
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ServiceError::Internal(e.to_string().into()))
    })
    .await
    .map_err(ServiceError::internal)?
}

/// Verifies a password; with no stored hash it still spends the same time (a dummy hash), so
/// answers do not reveal whether an account exists.
pub async fn verify_password(ctx: &Ctx, password: Secret<String>, hash: Option<String>) -> Result<bool> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let argon = argon(&ctx)?;
        let dummy = DUMMY.get_or_init(|| {
            let salt = SaltString::generate(&mut OsRng);
            argon
                .hash_password(b"no password matches this one", &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        });
        let stored = hash.as_deref().unwrap_or(dummy);
        let Ok(parsed) = PasswordHash::new(stored) else { return Ok(false) };
        let ok = argon.verify_password(password.expose().as_bytes(), &parsed).is_ok();
        Ok(ok && hash.is_some())
    })
    .await
    .map_err(ServiceError::internal)?
}

/// On an installation with no user, creates the first administrator and returns the one-time
/// bootstrap secret to show on the terminal. `None` when already initialised.
pub async fn bootstrap(ctx: &Ctx) -> Result<Option<Secret<String>>> {
    let secret = tokens::random_token(BOOTSTRAP_PREFIX);
    let created =
        store_auth::bootstrap_admin_if_empty(&ctx.db, &sha256_hex(secret.expose()), ctx.clock.now()).await?;
    Ok(created.map(|_| secret))
}

/// Exchanges the bootstrap secret for an email and password, and opens a first session.
pub async fn exchange_bootstrap(
    ctx: &Ctx,
    bootstrap_secret: Secret<String>,
    email: &str,
    password: Secret<String>,
) -> Result<Tokens> {
    let mut errors = ValidationErrors::default();
    let email = errors.check(Email::parse("email", email));
    errors.check(validate_password("password", password.expose()));
    errors.finish()?;
    let Some(email) = email else { unreachable!("errors were checked") };
    let hash = hash_password(ctx, password).await?;
    let now = ctx.clock.now();
    let user = store_auth::exchange_bootstrap_secret(
        &ctx.db,
        &sha256_hex(bootstrap_secret.expose()),
        email.as_str(),
        &hash,
        now,
    )
    .await?
    .ok_or_else(ServiceError::unauthenticated)?;
    tracing::info!(user_id = %user.id, "bootstrap secret exchanged for a password");
    let principal = Principal {
        kind: PrincipalKind::PlatformUser,
        id: user.id.to_string(),
        roles: user.platform_roles.clone(),
    };
    let uid = user.id.to_string();
    journal::record_security(
        &ctx.db,
        None,
        now,
        "bootstrap.exchanged",
        &principal,
        Some(("user", &uid)),
        serde_json::json!({}),
    )
    .await?;
    open_session(ctx, &user, None, vec!["pwd".into()], None).await
}

/// What a login presents.
#[derive(Debug)]
pub struct LoginRequest {
    pub email: String,
    pub password: Secret<String>,
    /// The tenant to log into (id or slug); none for a platform session.
    pub tenant: Option<String>,
    /// A TOTP code, required when the user has MFA enabled.
    pub totp_code: Option<String>,
    /// A recovery code, instead of a TOTP code.
    pub recovery_code: Option<Secret<String>>,
    /// The client's address, for per-address throttling.
    pub client_ip: Option<IpAddr>,
}

/// Failures before an account locks; each further failure doubles the wait.
const FREE_FAILURES: i32 = 5;
/// Failures after which the account owner is told.
const NOTIFY_AT: i32 = 10;
/// Longest lock.
const MAX_LOCK: Duration = Duration::minutes(30);
/// Failures from one address before it is slowed down.
const IP_FREE_FAILURES: i32 = 20;

fn lock_for(free: i32) -> impl Fn(i32) -> Option<Duration> {
    move |failures| {
        (failures > free).then(|| {
            let exp = (failures - free - 1).clamp(0, 20) as u32;
            Duration::seconds(1i64 << exp).min(MAX_LOCK)
        })
    }
}

fn retry_after(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<u64> {
    until.filter(|u| *u > now).map(|u| (u - now).num_seconds().max(1) as u64)
}

/// Password login (plus TOTP when enabled), throttled per account and per client address.
/// Unknown accounts and wrong passwords give the same answer in the same time.
pub async fn login(ctx: &Ctx, req: LoginRequest) -> Result<Tokens> {
    let now = ctx.clock.now();
    let email = Email::parse("email", &req.email).ok();
    let account_key = format!("a:{}", sha256_hex(email.as_ref().map(Email::as_str).unwrap_or(&req.email)));
    let ip_key = req.client_ip.map(|ip| format!("i:{ip}"));
    for key in std::iter::once(&account_key).chain(ip_key.as_ref()) {
        if let Some(t) = sessions::throttle(&ctx.db, key).await? {
            if let Some(secs) = retry_after(t.locked_until, now) {
                return Err(ServiceError::Throttled { retry_after_secs: secs });
            }
        }
    }
    let found = match &email {
        Some(e) => store_auth::user_by_email(&ctx.db, e.as_str()).await?,
        None => None,
    };
    let (user, secrets) = match found {
        Some((u, s)) if u.active => (Some(u), Some(s)),
        _ => (None, None),
    };
    let password_ok =
        verify_password(ctx, req.password, secrets.as_ref().and_then(|s| s.password_hash.clone())).await?;
    let (Some(user), Some(secrets), true) = (user, secrets, password_ok) else {
        return Err(login_failed(ctx, &account_key, ip_key.as_deref(), email.as_ref(), now).await);
    };

    let mut amr = vec!["pwd".to_owned()];
    let mut mfa_at = None;
    if user.totp_enabled {
        let ok = match (&req.totp_code, &req.recovery_code) {
            (Some(code), _) => mfa::check_totp(ctx, &user, &secrets, code).await?,
            (None, Some(code)) => mfa::use_recovery_code(ctx, &user, code.expose()).await?,
            (None, None) => {
                return Err(ServiceError::Unauthenticated {
                    code: "mfa_required",
                    message: "this account requires a TOTP code",
                })
            }
        };
        if !ok {
            return Err(login_failed(ctx, &account_key, ip_key.as_deref(), email.as_ref(), now).await);
        }
        amr.push("otp".into());
        mfa_at = Some(now);
    }
    sessions::clear_failures(&ctx.db, &account_key).await?;

    let tenant_id = match &req.tenant {
        None => None,
        Some(t) => {
            let tenant = store_auth::resolve_tenant(&ctx.db, t)
                .await?
                .ok_or(ServiceError::NotFound { resource: "tenant" })?;
            if tenant.status == azotte_domain::tenant::TenantStatus::Suspended {
                return Err(store_auth::AuthError::TenantSuspended.into());
            }
            if store_auth::membership_roles(&ctx.db, tenant.id, user.id).await?.is_none() {
                return Err(store_auth::AuthError::NotAMember.into());
            }
            Some(tenant.id)
        }
    };
    let tokens = open_session(ctx, &user, tenant_id, amr.clone(), mfa_at).await?;
    let principal = Principal { kind: PrincipalKind::User, id: user.id.to_string(), roles: vec![] };
    let uid = user.id.to_string();
    let body = serde_json::json!({"tenant_id": tenant_id.map(|t| t.to_string()), "amr": amr});
    journal::record_security(&ctx.db, None, now, "login.succeeded", &principal, Some(("user", &uid)), body)
        .await?;
    Ok(tokens)
}

async fn login_failed(
    ctx: &Ctx,
    account_key: &str,
    ip_key: Option<&str>,
    email: Option<&Email>,
    now: DateTime<Utc>,
) -> ServiceError {
    let result = async {
        let t = sessions::record_failure(&ctx.db, account_key, now, lock_for(FREE_FAILURES)).await?;
        if let Some(ip) = ip_key {
            sessions::record_failure(&ctx.db, ip, now, lock_for(IP_FREE_FAILURES)).await?;
        }
        if t.failures == NOTIFY_AT {
            tracing::warn!(failures = t.failures, "account locked after repeated failed logins");
            if let (Some(e), Some(until)) = (email, t.locked_until) {
                if store_auth::user_by_email(&ctx.db, e.as_str()).await?.is_some() {
                    ctx.mailer.send(Mail::AccountLocked { to: e.as_str().to_owned(), until });
                }
            }
        }
        Ok::<_, ServiceError>(())
    }
    .await;
    let recorded = crate::security::record(
        ctx,
        None,
        "login.failed",
        &Principal { kind: PrincipalKind::User, id: "unauthenticated".into(), roles: vec![] },
        account_key,
        serde_json::json!({"account": account_key, "decision": "deny"}),
    )
    .await;
    match result.and(recorded) {
        Ok(()) => ServiceError::Unauthenticated {
            code: "invalid_credentials",
            message: "the email or password is wrong",
        },
        Err(e) => e,
    }
}

fn issue_access(ctx: &Ctx, family: &Family, user: &User) -> Result<(Secret<String>, DateTime<Utc>)> {
    let key = ctx.ring.signing().ok_or_else(|| ServiceError::Internal("no JWT signing key loaded".into()))?;
    let now = ctx.clock.now();
    let exp = now + ACCESS_TTL;
    let claims = Claims {
        iss: ctx.issuer.clone(),
        aud: AUDIENCE.into(),
        sub: user.id.to_string(),
        tid: family.tenant_id.map(|t| t.to_string()),
        roles: if family.tenant_id.is_some() { vec![] } else { user.platform_roles.clone() },
        amr: family.amr.clone(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: exp.timestamp(),
        jti: SessionId::new().to_string(),
        sid: family.id.to_string(),
    };
    Ok((Secret::new(jwt::encode(&key, &claims)), exp))
}

async fn open_session(
    ctx: &Ctx,
    user: &User,
    tenant_id: Option<azotte_domain::id::TenantId>,
    amr: Vec<String>,
    mfa_at: Option<DateTime<Utc>>,
) -> Result<Tokens> {
    let now = ctx.clock.now();
    let refresh = tokens::random_token(REFRESH_PREFIX);
    let family = sessions::open(
        &ctx.db,
        &NewFamily {
            user_id: user.id,
            tenant_id,
            amr: &amr,
            mfa_at,
            now,
            expires_at: now + SESSION_MAX,
            refresh_hash: &sha256_hex(refresh.expose()),
            refresh_expires_at: now + REFRESH_TTL,
        },
    )
    .await?;
    let (access, expires_at) = issue_access(ctx, &family, user)?;
    Ok(Tokens {
        access_token: access,
        refresh_token: refresh,
        expires_at,
        user_id: user.id,
        tenant_id: tenant_id.map(|t| t.to_string()),
    })
}

/// Spends a refresh token for a new access and refresh token. Presenting a spent one revokes
/// the whole session family.
pub async fn refresh(ctx: &Ctx, refresh_token: &str) -> Result<Tokens> {
    let now = ctx.clock.now();
    let next = tokens::random_token(REFRESH_PREFIX);
    match sessions::rotate(
        &ctx.db,
        &sha256_hex(refresh_token),
        &sha256_hex(next.expose()),
        now,
        now + REFRESH_TTL,
    )
    .await?
    {
        RefreshOutcome::Rotated(family) => {
            let (user, _) = store_auth::user_by_id(&ctx.db, family.user_id)
                .await?
                .ok_or_else(ServiceError::unauthenticated)?;
            if !user.active {
                return Err(ServiceError::unauthenticated());
            }
            let (access, expires_at) = issue_access(ctx, &family, &user)?;
            Ok(Tokens {
                access_token: access,
                refresh_token: next,
                expires_at,
                user_id: user.id,
                tenant_id: family.tenant_id.map(|t| t.to_string()),
            })
        }
        RefreshOutcome::Reused(family) => {
            tracing::warn!(session_id = %family.id, user_id = %family.user_id, "refresh token reused: session family revoked");
            let principal =
                Principal { kind: PrincipalKind::User, id: family.user_id.to_string(), roles: vec![] };
            let sid = family.id.to_string();
            let body = serde_json::json!({"session_id": sid, "outcome": "session_revoked"});
            crate::security::record(ctx, None, "session.refresh_reused", &principal, &sid, body).await?;
            Err(ServiceError::Unauthenticated {
                code: "refresh_token_reused",
                message: "this refresh token was already used; the session is revoked",
            })
        }
        RefreshOutcome::Invalid => Err(ServiceError::unauthenticated()),
    }
}

/// Ends the session of a credential.
pub async fn logout(ctx: &Ctx, principal: &Principal, family_id: SessionId) -> Result<()> {
    let now = ctx.clock.now();
    sessions::revoke(&ctx.db, family_id, "logout", now).await?;
    let sid = family_id.to_string();
    let body = serde_json::json!({"reason": "logout"});
    journal::record_security(&ctx.db, None, now, "session.revoked", principal, Some(("session", &sid)), body)
        .await?;
    Ok(())
}

fn decode_claims(ctx: &Ctx, token: &str) -> std::result::Result<Claims, JwtError> {
    let now = ctx.clock.now();
    let v = Validation {
        issuer: ctx.issuer.clone(),
        audience: AUDIENCE.into(),
        now: now.timestamp(),
        leeway_secs: 30,
    };
    jwt::decode(token, |kid| ctx.ring.verifying(kid, now, ACCESS_TTL), &v)
}

async fn claims(ctx: &Ctx, token: &str) -> Result<Claims> {
    match decode_claims(ctx, token) {
        Err(JwtError::UnknownKey) => {
            // Another process may have rotated the keys: reload once, then decide.
            ctx.ring.load(&ctx.db, &ctx.keys, ctx.clock.now()).await?;
            decode_claims(ctx, token).map_err(jwt_error)
        }
        other => other.map_err(jwt_error),
    }
}

fn jwt_error(e: JwtError) -> ServiceError {
    let code = match e {
        JwtError::Expired => "token_expired",
        _ => "unauthenticated",
    };
    ServiceError::Unauthenticated { code, message: "the access token is invalid or expired" }
}

async fn session_of_token(ctx: &Ctx, token: &str) -> Result<(Family, User)> {
    let c = claims(ctx, token).await?;
    let sid: SessionId = c.sid.parse().map_err(|_| ServiceError::unauthenticated())?;
    let sub: UserId = c.sub.parse().map_err(|_| ServiceError::unauthenticated())?;
    Ok(store_auth::session(&ctx.db, sid, sub, c.tid.as_deref(), ctx.clock.now()).await?)
}

/// A bearer credential that is an API key (`az_test_…`, `az_live_…`).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with("az_test_") || token.starts_with("az_live_")
}

/// The platform scope of a user's access token. API keys never get one.
pub async fn authenticate_platform(ctx: &Ctx, token: &str) -> Result<PlatformScope> {
    if is_api_key(token) {
        return Err(ServiceError::Forbidden {
            code: "user_session_required",
            message: "this route needs a user session, not an API key".into(),
        });
    }
    let (family, user) = session_of_token(ctx, token).await?;
    Ok(store_auth::platform_scope(&family, &user))
}

/// The tenant scope of a bearer credential and the `x-tn` / `x-env` headers.
pub async fn authenticate_tenant(
    ctx: &Ctx,
    token: &str,
    tenant_ref: Option<&str>,
    environment: Option<&str>,
) -> Result<TenantScope> {
    let env = match environment {
        None => None,
        Some(e) => Some(e.parse::<Environment>().map_err(|_| ServiceError::BadRequest {
            code: "invalid_environment",
            message: "x-env must be development, staging or production",
        })?),
    };
    if is_api_key(token) {
        let parsed = parse_api_key(token).ok_or_else(ServiceError::unauthenticated)?;
        let tenant_ref = tenant_ref.ok_or_else(tenant_required)?;
        let hash_key = &ctx.keys.api_key_hash;
        let (scope, _) = store_auth::authenticate_api_key(
            &ctx.db,
            &parsed.key_id,
            tenant_ref,
            env,
            |stored| tokens::verify_api_key(hash_key, token, &HashedApiKey::from_stored(stored.to_owned())),
            ctx.clock.now(),
        )
        .await?;
        if (scope.mode() == azotte_domain::tenant::Mode::Live) != parsed.live {
            return Err(ServiceError::unauthenticated());
        }
        return Ok(scope);
    }
    let (family, user) = session_of_token(ctx, token).await?;
    let tenant_ref = tenant_ref.ok_or_else(tenant_required)?;
    let env = env.ok_or_else(|| ServiceError::BadRequest {
        code: "environment_required",
        message: "this route requires the x-env header: development, staging or production",
    })?;
    let (scope, _) = store_auth::enter_tenant(&ctx.db, &family, &user, tenant_ref, env).await?;
    if scope.is_platform_access() {
        // Platform staff inside a tenant is always on the tenant's record (folded per minute).
        let p = scope.principal().clone();
        let body = serde_json::json!({"decision": "allow", "permission": "platform.tenant.access"});
        let target = Some((scope.tenant_id(), scope.environment().as_str()));
        crate::security::record(ctx, target, "audit.platform_access", &p, &p.id, body).await?;
    }
    Ok(scope)
}

fn tenant_required() -> ServiceError {
    ServiceError::BadRequest {
        code: "tenant_required",
        message: "this route requires the x-tn header naming the tenant (id or slug)",
    }
}

/// The published signing keys.
pub fn jwks(ctx: &Ctx) -> Vec<serde_json::Value> {
    ctx.ring.jwks(ctx.clock.now(), ACCESS_TTL)
}

/// Rotates the JWT signing key; tokens signed by the old key stay valid until they expire.
pub async fn rotate_signing_key(ctx: &Ctx) -> Result<String> {
    let kid = crate::keys::rotate(&ctx.db, &ctx.keys, ctx.clock.now()).await?;
    ctx.ring.load(&ctx.db, &ctx.keys, ctx.clock.now()).await?;
    Ok(kid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rules() {
        assert_eq!(validate_password("p", "short").unwrap_err().code, "password_too_short");
        assert_eq!(validate_password("p", "Password1234").unwrap_err().code, "password_too_common");
        assert_eq!(validate_password("p", "zzzzzzzzzzzzzz").unwrap_err().code, "password_too_common");
        assert_eq!(validate_password("p", &"x".repeat(513)).unwrap_err().code, "password_too_long");
        assert!(validate_password("p", "long enough pass").is_ok());
    }

    #[test]
    fn lock_schedule_doubles_and_caps() {
        let f = lock_for(5);
        assert_eq!(f(5), None);
        assert_eq!(f(6), Some(Duration::seconds(1)));
        assert_eq!(f(7), Some(Duration::seconds(2)));
        assert_eq!(f(10), Some(Duration::seconds(16)));
        assert_eq!(f(40), Some(MAX_LOCK));
    }
}

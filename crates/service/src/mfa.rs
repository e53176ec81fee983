//! TOTP multi-factor authentication: enrolment, login checks, recovery codes and step-up.

use azotte_crypto::aead;
use azotte_crypto::tokens::sha256_hex;
use azotte_crypto::totp::{self, TotpSecret};
use azotte_domain::Secret;
use azotte_store::auth as store_auth;
use azotte_store::sessions;
use azotte_store::users::{User, UserSecrets};
use azotte_store::{Credential, PlatformScope};

use crate::{Ctx, Result, ServiceError};

/// How many recovery codes a user gets.
pub const RECOVERY_CODES: usize = 10;
/// How recent an MFA step must be for sensitive acts (key management).
pub const FRESH_MFA: chrono::Duration = chrono::Duration::minutes(10);

fn aad(user: &User) -> Vec<u8> {
    format!("azotte:totp:{}", user.id).into_bytes()
}

/// A started enrolment: show the URI as a QR code, then confirm with a code.
#[derive(Debug)]
pub struct Enrolment {
    pub secret_base32: Secret<String>,
    pub otpauth_uri: Secret<String>,
}

fn session_user(scope: &PlatformScope) -> Result<azotte_domain::id::UserId> {
    scope.principal().id.parse().map_err(|_| ServiceError::unauthenticated())
}

/// Starts (or restarts) TOTP enrolment for the session's user.
pub async fn start_enrolment(ctx: &Ctx, scope: &PlatformScope) -> Result<Enrolment> {
    let (user, _) = store_auth::user_by_id(&ctx.db, session_user(scope)?)
        .await?
        .ok_or_else(ServiceError::unauthenticated)?;
    if user.totp_enabled {
        return Err(ServiceError::Conflict {
            code: "mfa_already_enabled",
            message: "TOTP is already enabled".into(),
            field: None,
        });
    }
    let secret = TotpSecret::generate();
    let sealed =
        aead::seal(&ctx.keys.seal, secret.as_bytes(), &aad(&user)).map_err(ServiceError::internal)?;
    store_auth::set_pending_totp(&ctx.db, user.id, &sealed, ctx.clock.now()).await?;
    let account = user.email.clone().unwrap_or_else(|| user.id.to_string());
    Ok(Enrolment {
        secret_base32: secret.to_base32(),
        otpauth_uri: Secret::new(totp::otpauth_uri(&secret, "Azotte", &account)),
    })
}

fn open_secret(ctx: &Ctx, user: &User, secrets: &UserSecrets) -> Result<Option<TotpSecret>> {
    let Some(sealed) = &secrets.totp_secret else { return Ok(None) };
    let bytes = aead::open(&ctx.keys.seal, sealed, &aad(user))
        .map_err(|_| ServiceError::Internal("TOTP secret does not decrypt".into()))?;
    TotpSecret::from_bytes(bytes)
        .map(Some)
        .map_err(|_| ServiceError::Internal("TOTP secret malformed".into()))
}

/// Confirms enrolment with a first code; returns the recovery codes, shown only now.
pub async fn confirm_enrolment(ctx: &Ctx, scope: &PlatformScope, code: &str) -> Result<Vec<Secret<String>>> {
    let (user, secrets) = store_auth::user_by_id(&ctx.db, session_user(scope)?)
        .await?
        .ok_or_else(ServiceError::unauthenticated)?;
    if user.totp_enabled {
        return Err(ServiceError::Conflict {
            code: "mfa_already_enabled",
            message: "TOTP is already enabled".into(),
            field: None,
        });
    }
    let secret = open_secret(ctx, &user, &secrets)?.ok_or(ServiceError::Conflict {
        code: "mfa_enrolment_not_started",
        message: "start the enrolment first".into(),
        field: None,
    })?;
    let now = ctx.clock.now();
    let step = totp::verify(&secret, code, now.timestamp(), None).ok_or(ServiceError::Unauthenticated {
        code: "invalid_mfa_code",
        message: "the code is wrong or expired",
    })?;
    let codes: Vec<Secret<String>> =
        (0..RECOVERY_CODES).map(|_| azotte_crypto::tokens::random_token("rc_")).collect();
    let hashes: Vec<String> = codes.iter().map(|c| sha256_hex(c.expose())).collect();
    if !store_auth::enable_totp(&ctx.db, user.id, step, &hashes, now).await? {
        return Err(ServiceError::Conflict {
            code: "mfa_already_enabled",
            message: "TOTP is already enabled".into(),
            field: None,
        });
    }
    let uid = user.id.to_string();
    azotte_store::journal::record_security(
        &ctx.db,
        None,
        now,
        "mfa.enabled",
        scope.principal(),
        Some(("user", &uid)),
        serde_json::json!({"method": "totp"}),
    )
    .await?;
    if let Credential::Session { family_id, amr, .. } = scope.credential() {
        let mut amr = amr.clone();
        if !amr.iter().any(|m| m == "otp") {
            amr.push("otp".into());
        }
        sessions::mark_mfa(&ctx.db, *family_id, &amr, now).await?;
    }
    Ok(codes)
}

/// Checks a TOTP code for a user with MFA enabled, refusing a code (step) used before.
pub async fn check_totp(ctx: &Ctx, user: &User, secrets: &UserSecrets, code: &str) -> Result<bool> {
    let Some(secret) = open_secret(ctx, user, secrets)? else { return Ok(false) };
    let Some(step) = totp::verify(&secret, code, ctx.clock.now().timestamp(), secrets.totp_last_step) else {
        return Ok(false);
    };
    Ok(store_auth::advance_totp_step(&ctx.db, user.id, step).await?)
}

/// Spends a recovery code.
pub async fn use_recovery_code(ctx: &Ctx, user: &User, code: &str) -> Result<bool> {
    Ok(store_auth::use_recovery_code(&ctx.db, user.id, &sha256_hex(code.trim()), ctx.clock.now()).await?)
}

/// Step-up: proves MFA again in the current session (needed for sensitive acts).
pub async fn verify_session(ctx: &Ctx, scope: &PlatformScope, code: &str) -> Result<()> {
    let Credential::Session { family_id, amr, .. } = scope.credential() else {
        return Err(ServiceError::unauthenticated());
    };
    let (user, secrets) = store_auth::user_by_id(&ctx.db, session_user(scope)?)
        .await?
        .ok_or_else(ServiceError::unauthenticated)?;
    if !user.totp_enabled {
        return Err(ServiceError::Conflict {
            code: "mfa_not_enabled",
            message: "enrol TOTP first".into(),
            field: None,
        });
    }
    if !check_totp(ctx, &user, &secrets, code).await? {
        return Err(ServiceError::Unauthenticated {
            code: "invalid_mfa_code",
            message: "the code is wrong, expired or already used",
        });
    }
    let mut amr = amr.clone();
    if !amr.iter().any(|m| m == "otp") {
        amr.push("otp".into());
    }
    sessions::mark_mfa(&ctx.db, *family_id, &amr, ctx.clock.now()).await?;
    Ok(())
}

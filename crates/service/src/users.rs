//! A tenant's people: members and their roles, invitations, and custom roles.

use azotte_crypto::tokens::{random_token, sha256_hex};
use azotte_domain::email::Email;
use azotte_domain::id::UserId;
use azotte_domain::permission::{tenant_role_permissions, Permission, PermissionSet};
use azotte_domain::{FieldError, Secret, ValidationErrors};
use azotte_store::auth as store_auth;
use azotte_store::invitations::{self, Invitation};
use azotte_store::memberships::{self, Member};
use azotte_store::roles::{self, CustomRole};
use azotte_store::{api_keys, StoreError, TenantScope, TenantTx};
use chrono::Duration;
use serde_json::json;

use crate::auth::{self, Tokens};
use crate::mail::Mail;
use crate::{Ctx, Result, ServiceError};

/// How long an invitation can be accepted.
pub const INVITATION_TTL: Duration = Duration::hours(72);

fn new_id(prefix: &str) -> String {
    let raw = azotte_domain::id::RequestId::new().to_string();
    format!("{prefix}_{}", raw.trim_start_matches("req_"))
}

/// Checks role names exist and grant nothing the acting principal lacks.
async fn check_roles(
    tx: &mut TenantTx,
    scope: &TenantScope,
    field: &str,
    names: &[String],
) -> Result<PermissionSet> {
    if names.is_empty() || names.len() > 20 {
        return Err(
            ValidationErrors::from(FieldError::new(field, "invalid_length", "give 1 to 20 roles")).into()
        );
    }
    let mut all = PermissionSet::new();
    for (i, n) in names.iter().enumerate() {
        let p = roles::permissions_of(tx, std::slice::from_ref(n)).await?;
        if p.is_empty() && tenant_role_permissions(n).is_none() {
            return Err(ValidationErrors::from(FieldError::new(
                format!("{field}[{i}]"),
                "unknown_role",
                format!("no role named `{n}`"),
            ))
            .into());
        }
        all.extend(p);
    }
    if let Some(p) = all.iter().find(|p| !scope.can(**p)) {
        return Err(ServiceError::Forbidden {
            code: "permission_escalation",
            message: format!("cannot grant {p}, which you do not hold"),
        });
    }
    Ok(all)
}

/// Invites a person by email; they set a password through the emailed one-time token.
pub async fn invite(
    ctx: &Ctx,
    scope: &TenantScope,
    email: &str,
    role_names: Vec<String>,
) -> Result<Invitation> {
    crate::security::require(ctx, scope, Permission::UserInvite).await?;
    let email = Email::parse("email", email).map_err(ValidationErrors::from)?;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(scope).await?;
    check_roles(&mut tx, scope, "roles", &role_names).await?;
    if let Some((u, _)) = memberships::user_by_email(&mut tx, email.as_str()).await? {
        if memberships::get(&mut tx, u.id).await?.is_some() {
            return Err(ServiceError::Conflict {
                code: "already_a_member",
                message: "this person is already a member".into(),
                field: Some("email"),
            });
        }
    }
    let token = random_token("azinv_");
    let inv = invitations::create(
        &mut tx,
        &new_id("inv"),
        email.as_str(),
        &role_names,
        &sha256_hex(token.expose()),
        &scope.principal().id,
        now,
        now + INVITATION_TTL,
    )
    .await?;
    // The invitee's address is personal data: the journal names the invitation, not the email.
    let r = Some(("invitation", inv.id.as_str()));
    tx.action(now, "user.invite", r, json!({"roles": role_names})).await?;
    tx.outcome(now, "invitation.created", r, json!({"roles": role_names, "expires_at": inv.expires_at}))
        .await?;
    tx.commit().await?;
    ctx.mailer.send(Mail::Invitation {
        to: email.as_str().to_owned(),
        tenant: scope.tenant_id().to_string(),
        token: token.expose().clone(),
    });
    Ok(inv)
}

/// Redeems an invitation: creates the user (or, for an existing user, checks their password),
/// adds the membership, and opens a session in the tenant.
pub async fn accept_invitation(
    ctx: &Ctx,
    tenant_ref: &str,
    token: &str,
    password: Secret<String>,
) -> Result<Tokens> {
    let invalid = || ServiceError::Unauthenticated {
        code: "invalid_invitation",
        message: "the invitation is unknown, used or expired",
    };
    let scope = store_auth::invitation_scope(&ctx.db, tenant_ref).await.map_err(|e| match e {
        store_auth::AuthError::TenantNotFound => invalid(),
        other => other.into(),
    })?;
    let now = ctx.clock.now();
    let mut tx = ctx.db.tenant_tx(&scope).await?;
    let inv = invitations::by_token(&mut tx, &sha256_hex(token)).await?.ok_or_else(invalid)?;
    if inv.accepted_at.is_some() || inv.expires_at <= now {
        return Err(invalid());
    }
    let user_id: UserId = match memberships::user_by_email(&mut tx, &inv.email).await? {
        Some((user, secrets)) => {
            if !auth::verify_password(ctx, password.clone(), secrets.password_hash).await? {
                return Err(ServiceError::Unauthenticated {
                    code: "invalid_credentials",
                    message: "use your existing password to accept",
                });
            }
            user.id
        }
        None => {
            auth::validate_password("password", password.expose()).map_err(ValidationErrors::from)?;
            let hash = auth::hash_password(ctx, password.clone()).await?;
            memberships::create_user(&mut tx, &inv.email, &hash, now).await?
        }
    };
    memberships::put(&mut tx, user_id, &inv.roles, now).await?;
    if !invitations::accept(&mut tx, &inv.id, now).await? {
        return Err(invalid());
    }
    let uid = user_id.to_string();
    tx.action(now, "invitation.accept", Some(("invitation", &inv.id)), json!({})).await?;
    tx.outcome(now, "membership.created", Some(("user", &uid)), json!({"roles": inv.roles})).await?;
    tx.commit().await?;
    auth::login(
        ctx,
        auth::LoginRequest {
            email: inv.email,
            password,
            tenant: Some(scope.tenant_id().to_string()),
            totp_code: None,
            recovery_code: None,
            client_ip: None,
        },
    )
    .await
}

/// Members of the tenant.
pub async fn list_members(ctx: &Ctx, scope: &TenantScope) -> Result<Vec<Member>> {
    crate::security::require(ctx, scope, Permission::UserRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let m = memberships::list(&mut tx).await?;
    tx.commit().await?;
    Ok(m)
}

/// Replaces a member's roles.
pub async fn set_roles(
    ctx: &Ctx,
    scope: &TenantScope,
    user_id: UserId,
    role_names: Vec<String>,
) -> Result<Member> {
    crate::security::require(ctx, scope, Permission::UserManage).await?;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    memberships::get(&mut tx, user_id).await?.ok_or(ServiceError::NotFound { resource: "user" })?;
    check_roles(&mut tx, scope, "roles", &role_names).await?;
    let now = ctx.clock.now();
    memberships::put(&mut tx, user_id, &role_names, now).await?;
    let m = memberships::get(&mut tx, user_id).await?.ok_or(ServiceError::NotFound { resource: "user" })?;
    let uid = user_id.to_string();
    tx.action(now, "membership.update", Some(("user", &uid)), json!({"roles": role_names})).await?;
    tx.outcome(now, "membership.updated", Some(("user", &uid)), json!({"roles": m.roles})).await?;
    tx.commit().await?;
    Ok(m)
}

/// Removes a member: their sessions for this tenant stop working at the next request.
pub async fn remove_member(ctx: &Ctx, scope: &TenantScope, user_id: UserId) -> Result<()> {
    crate::security::require(ctx, scope, Permission::UserManage).await?;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    if !memberships::remove(&mut tx, user_id).await? {
        return Err(ServiceError::NotFound { resource: "user" });
    }
    let (now, uid) = (ctx.clock.now(), user_id.to_string());
    tx.action(now, "membership.remove", Some(("user", &uid)), json!({})).await?;
    tx.outcome(now, "membership.removed", Some(("user", &uid)), json!({})).await?;
    tx.commit().await?;
    Ok(())
}

fn parse_permissions(names: &[String]) -> Result<PermissionSet> {
    let mut errors = ValidationErrors::default();
    let mut set = PermissionSet::new();
    for (i, n) in names.iter().enumerate() {
        match n.parse::<Permission>() {
            Ok(p) if !p.is_platform() => {
                set.insert(p);
            }
            _ => errors.push(FieldError::new(
                format!("permissions[{i}]"),
                "unknown_permission",
                format!("`{n}` is not a tenant permission"),
            )),
        }
    }
    errors.finish()?;
    Ok(set)
}

fn check_grant(scope: &TenantScope, perms: &PermissionSet) -> Result<()> {
    match perms.iter().find(|p| !scope.can(**p)) {
        Some(p) => Err(ServiceError::Forbidden {
            code: "permission_escalation",
            message: format!("cannot grant {p}, which you do not hold"),
        }),
        None => Ok(()),
    }
}

/// Creates a custom role; it cannot exceed the creator's own permissions.
pub async fn create_role(
    ctx: &Ctx,
    scope: &TenantScope,
    name: &str,
    description: &str,
    permissions: &[String],
) -> Result<CustomRole> {
    crate::security::require(ctx, scope, Permission::RoleManage).await?;
    let mut errors = ValidationErrors::default();
    let valid_name = name.len() >= 2
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_lowercase()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_name {
        errors.push(FieldError::new(
            "name",
            "invalid_format",
            "2–63 characters: lowercase letters, digits, underscores; starts with a letter",
        ));
    } else if tenant_role_permissions(name).is_some() || name.starts_with("platform_") {
        errors.push(FieldError::new("name", "reserved", "is the name of a built-in role"));
    }
    if description.chars().count() > 500 {
        errors.push(FieldError::new("description", "invalid_length", "at most 500 characters"));
    }
    if permissions.is_empty() {
        errors.push(FieldError::new("permissions", "invalid_length", "give at least one permission"));
    }
    errors.finish()?;
    let perms = parse_permissions(permissions)?;
    check_grant(scope, &perms)?;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let role = roles::create(&mut tx, &new_id("rol"), name, description, &perms, ctx.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::UniqueViolation { constraint } if constraint == "roles_tenant_name_key" => {
                ServiceError::Conflict {
                    code: "role_name_taken",
                    message: format!("a role named `{name}` exists"),
                    field: Some("name"),
                }
            }
            other => other.into(),
        })?;
    let now = ctx.clock.now();
    let perms: Vec<&str> = role.permissions.iter().map(|p| p.as_str()).collect();
    tx.action(now, "role.create", Some(("role", &role.id)), json!({"name": role.name})).await?;
    tx.outcome(
        now,
        "role.created",
        Some(("role", &role.id)),
        json!({"name": role.name, "permissions": perms}),
    )
    .await?;
    tx.commit().await?;
    Ok(role)
}

/// Custom roles of the tenant.
pub async fn list_roles(ctx: &Ctx, scope: &TenantScope) -> Result<Vec<CustomRole>> {
    crate::security::require(ctx, scope, Permission::RoleRead).await?;
    let mut tx = ctx.db.tenant_read_tx(scope).await?;
    let r = roles::list(&mut tx).await?;
    tx.commit().await?;
    Ok(r)
}

/// Changes a custom role's description and/or permissions.
pub async fn update_role(
    ctx: &Ctx,
    scope: &TenantScope,
    id: &str,
    description: Option<&str>,
    permissions: Option<&[String]>,
) -> Result<CustomRole> {
    crate::security::require(ctx, scope, Permission::RoleManage).await?;
    let perms = permissions.map(parse_permissions).transpose()?;
    if let Some(p) = &perms {
        if p.is_empty() {
            return Err(ValidationErrors::from(FieldError::new(
                "permissions",
                "invalid_length",
                "give at least one permission",
            ))
            .into());
        }
        check_grant(scope, p)?;
    }
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let role = roles::update(&mut tx, id, description, perms.as_ref(), ctx.clock.now())
        .await?
        .ok_or(ServiceError::NotFound { resource: "role" })?;
    let now = ctx.clock.now();
    let perms: Vec<&str> = role.permissions.iter().map(|p| p.as_str()).collect();
    tx.action(now, "role.update", Some(("role", id)), json!({})).await?;
    tx.outcome(now, "role.updated", Some(("role", id)), json!({"permissions": perms})).await?;
    tx.commit().await?;
    Ok(role)
}

/// Deletes a custom role nobody uses (409 `role_in_use` otherwise).
pub async fn delete_role(ctx: &Ctx, scope: &TenantScope, id: &str) -> Result<()> {
    crate::security::require(ctx, scope, Permission::RoleManage).await?;
    let mut tx = ctx.db.tenant_tx(scope).await?;
    let role = roles::get(&mut tx, id).await?.ok_or(ServiceError::NotFound { resource: "role" })?;
    let mut used = memberships::role_names_in_use(&mut tx).await?;
    used.extend(api_keys::role_names_in_use(&mut tx).await?);
    if used.contains(&role.name) {
        return Err(ServiceError::Conflict {
            code: "role_in_use",
            message: format!("role `{}` is held by members or API keys", role.name),
            field: None,
        });
    }
    roles::delete(&mut tx, id).await?;
    let now = ctx.clock.now();
    tx.action(now, "role.delete", Some(("role", id)), json!({"name": role.name})).await?;
    tx.outcome(now, "role.deleted", Some(("role", id)), json!({})).await?;
    tx.commit().await?;
    Ok(())
}

//! `/v1/users` and `/v1/roles`: a tenant's members, invitations and custom roles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::id::UserId;
use azotte_domain::permission::Permission;
use azotte_domain::Secret;
use azotte_service::users;
use azotte_store::memberships::Member;
use azotte_store::roles::CustomRole;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TokenResponse;
use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, Patch, TenantAuth};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members))
        .routes(routes!(invite))
        .routes(routes!(accept))
        .routes(routes!(update_member, remove_member))
        .routes(routes!(create_role, list_roles))
        .routes(routes!(update_role, delete_role))
}

const PROBLEM: &str = "application/problem+json";

/// A member of the tenant.
#[derive(Serialize, ToSchema)]
pub struct MemberView {
    user_id: UserId,
    email: Option<String>,
    roles: Vec<String>,
    mfa_enabled: bool,
    member_since: DateTime<Utc>,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        Self {
            user_id: m.user.id,
            email: m.user.email,
            roles: m.roles,
            mfa_enabled: m.user.totp_enabled,
            member_since: m.created_at,
        }
    }
}

/// Members of the tenant.
#[derive(Serialize, ToSchema)]
pub struct MemberList {
    data: Vec<MemberView>,
}

/// An invitation to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    email: String,
    /// Built-in or custom role names; none may grant more than the inviter holds.
    roles: Vec<String>,
}

/// A sent invitation (the token goes only to the invitee).
#[derive(Serialize, ToSchema)]
pub struct InvitationView {
    id: String,
    email: String,
    roles: Vec<String>,
    expires_at: DateTime<Utc>,
}

/// Redeeming an invitation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// Tenant id or slug, as in the invitation.
    tenant: String,
    /// The one-time token from the invitation.
    token: String,
    /// A new password, or the existing one if you already have an account.
    password: String,
}

/// New roles of a member.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    roles: Vec<String>,
}

/// A custom role to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    name: String,
    #[serde(default)]
    description: String,
    #[schema(value_type = Vec<Permission>)]
    permissions: Vec<String>,
}

/// Changes to a custom role.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRole {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    description: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Permission>>)]
    permissions: Patch<Vec<String>>,
}

/// A custom role.
#[derive(Serialize, ToSchema)]
pub struct RoleView {
    id: String,
    name: String,
    description: String,
    permissions: Vec<Permission>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<CustomRole> for RoleView {
    fn from(r: CustomRole) -> Self {
        Self {
            id: r.id,
            name: r.name,
            description: r.description,
            permissions: r.permissions.into_iter().collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Custom roles of the tenant.
#[derive(Serialize, ToSchema)]
pub struct RoleList {
    data: Vec<RoleView>,
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("user"))
}

/// Members of the tenant.
#[utoipa::path(get, path = "/v1/users", tag = "users", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = MemberList)))]
async fn list_members(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<MemberList>, ApiError> {
    let m = users::list_members(&state.ctx, &scope).await?;
    Ok(Json(MemberList { data: m.into_iter().map(Into::into).collect() }))
}

/// Invites a person; they receive a one-time token by email (valid 72 hours).
#[utoipa::path(post, path = "/v1/users/invitations", tag = "users", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    request_body = InviteRequest,
    responses((status = 201, body = InvitationView), (status = 409, description = "`already_a_member`", body = crate::Problem, content_type = PROBLEM)))]
async fn invite(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::UserInvite>,
    ApiJson(b): ApiJson<InviteRequest>,
) -> Result<(StatusCode, Json<InvitationView>), ApiError> {
    let inv = users::invite(&state.ctx, &scope, &b.email, b.roles).await?;
    Ok((
        StatusCode::CREATED,
        Json(InvitationView { id: inv.id, email: inv.email, roles: inv.roles, expires_at: inv.expires_at }),
    ))
}

/// Accepts an invitation and opens a session in the tenant.
#[utoipa::path(post, path = "/v1/auth/invitations/accept", tag = "auth", request_body = AcceptRequest,
    responses((status = 200, body = TokenResponse), (status = 401, description = "`invalid_invitation`", body = crate::Problem, content_type = PROBLEM)))]
async fn accept(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<AcceptRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let t = users::accept_invitation(&state.ctx, &b.tenant, &b.token, Secret::new(b.password)).await?;
    Ok(Json(t.into()))
}

/// Replaces a member's roles.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    request_body = UpdateMember,
    responses((status = 200, body = MemberView), (status = 404, body = crate::Problem, content_type = PROBLEM)))]
async fn update_member(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::UserManage>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateMember>,
) -> Result<Json<MemberView>, ApiError> {
    Ok(Json(users::set_roles(&state.ctx, &scope, user_id(&id)?, b.roles).await?.into()))
}

/// Removes a member from the tenant.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 204), (status = 404, body = crate::Problem, content_type = PROBLEM)))]
async fn remove_member(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::UserManage>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    users::remove_member(&state.ctx, &scope, user_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a custom role (never more than the creator holds).
#[utoipa::path(post, path = "/v1/roles", tag = "users", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    request_body = CreateRole,
    responses((status = 201, body = RoleView), (status = 409, description = "`role_name_taken`", body = crate::Problem, content_type = PROBLEM)))]
async fn create_role(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::RoleManage>,
    ApiJson(b): ApiJson<CreateRole>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let r = users::create_role(&state.ctx, &scope, &b.name, &b.description, &b.permissions).await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// Custom roles of the tenant.
#[utoipa::path(get, path = "/v1/roles", tag = "users", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 200, body = RoleList)))]
async fn list_roles(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
) -> Result<Json<RoleList>, ApiError> {
    let r = users::list_roles(&state.ctx, &scope).await?;
    Ok(Json(RoleList { data: r.into_iter().map(Into::into).collect() }))
}

/// Changes a custom role.
#[utoipa::path(patch, path = "/v1/roles/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    request_body = UpdateRole,
    responses((status = 200, body = RoleView), (status = 404, body = crate::Problem, content_type = PROBLEM)))]
async fn update_role(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::RoleManage>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateRole>,
) -> Result<Json<RoleView>, ApiError> {
    let description = b.description.required("description").map_err(|e| ApiError::validation(vec![e]))?;
    let permissions = b.permissions.required("permissions").map_err(|e| ApiError::validation(vec![e]))?;
    let r =
        users::update_role(&state.ctx, &scope, &id, description.as_deref(), permissions.as_deref()).await?;
    Ok(Json(r.into()))
}

/// Deletes an unused custom role.
#[utoipa::path(delete, path = "/v1/roles/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment")),
    responses((status = 204), (status = 409, description = "`role_in_use`", body = crate::Problem, content_type = PROBLEM)))]
async fn delete_role(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::RoleManage>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    users::delete_role(&state.ctx, &scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

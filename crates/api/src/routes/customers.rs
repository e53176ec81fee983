//! `/v1/customers`: the tenant's end customers (personal data in the PII vault) and their
//! payment methods (PSP tokens only).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use azotte_domain::customer::LegalType;
use azotte_domain::ValidationErrors;
use azotte_service::customers::{self, Address, Customer, CustomerInput, CustomerPatch};
use azotte_service::payment_methods::{self, AttachInput, Change};
use azotte_store::customers::PaymentMethodRow;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{need, Allowed, ApiJson, ApiQuery, Patch, TenantAuth};
use crate::AppState;

const PROBLEM: &str = "application/problem+json";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(upsert))
        .routes(routes!(get_one, update))
        .routes(routes!(attach, list_methods))
        .routes(routes!(get_method, delete_method))
        .routes(routes!(activate))
        .routes(routes!(inactivate))
        .routes(routes!(make_default))
}

/// A postal address.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    street: String,
    city: String,
    postal_code: String,
    /// ISO 3166-1 alpha-2.
    country: String,
}

impl From<AddressBody> for Address {
    fn from(a: AddressBody) -> Self {
        Address { street: a.street, city: a.city, postal_code: a.postal_code, country: a.country }
    }
}

impl From<Address> for AddressBody {
    fn from(a: Address) -> Self {
        AddressBody { street: a.street, city: a.city, postal_code: a.postal_code, country: a.country }
    }
}

/// A customer's fields.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    /// The tenant's own id for the customer; unique in the environment. (In the path for
    /// `PUT /v1/customers/by-external-id/{external_id}`.)
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// E.164, e.g. `+4915112345678`.
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    address: Option<AddressBody>,
    /// Claimed region: country (ISO 3166-1 alpha-2)…
    #[serde(default)]
    country: Option<String>,
    /// …and language (ISO 639-1).
    #[serde(default)]
    language: Option<String>,
    /// `individual` (default) or `company` (needs `company_name`).
    #[serde(default)]
    legal_type: Option<LegalType>,
    #[serde(default)]
    company_name: Option<String>,
    #[serde(default)]
    tax_id: Option<String>,
    /// Default true.
    #[serde(default)]
    active: Option<bool>,
    /// Up to 20 keys; values up to 500 characters.
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

impl CustomerBody {
    fn input(self) -> (Option<String>, CustomerInput) {
        (
            self.external_id,
            CustomerInput {
                email: self.email,
                phone: self.phone,
                first_name: self.first_name,
                last_name: self.last_name,
                address: self.address.map(Into::into),
                country: self.country,
                language: self.language,
                legal_type: self.legal_type,
                company_name: self.company_name,
                tax_id: self.tax_id,
                active: self.active,
                metadata: self.metadata,
            },
        )
    }
}

/// Changes to a customer; `null` clears a field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCustomer {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    email: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    phone: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    first_name: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    last_name: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<AddressBody>)]
    address: Patch<AddressBody>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    country: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    language: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<LegalType>)]
    legal_type: Patch<LegalType>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    company_name: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    tax_id: Patch<String>,
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    active: Patch<bool>,
    /// Replaces the metadata.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    metadata: Patch<BTreeMap<String, String>>,
}

fn clearable<T>(p: Patch<T>) -> Option<Option<T>> {
    match p {
        Patch::Absent => None,
        Patch::Null => Some(None),
        Patch::Value(v) => Some(Some(v)),
    }
}

/// A customer, decrypted for the caller.
#[derive(Serialize, ToSchema)]
pub struct CustomerView {
    id: String,
    external_id: String,
    email: Option<String>,
    phone: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    address: Option<AddressBody>,
    country: Option<String>,
    language: Option<String>,
    legal_type: LegalType,
    company_name: Option<String>,
    tax_id: Option<String>,
    /// `active` or `inactive`.
    status: String,
    metadata: BTreeMap<String, String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Customer> for CustomerView {
    fn from(c: Customer) -> Self {
        let p = c.personal;
        CustomerView {
            id: c.id,
            external_id: c.external_id,
            email: p.email,
            phone: p.phone,
            first_name: p.first_name,
            last_name: p.last_name,
            address: p.address.map(Into::into),
            country: c.country,
            language: c.language,
            legal_type: c.legal_type,
            company_name: p.company_name,
            tax_id: p.tax_id,
            status: c.status,
            metadata: p.metadata,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A page of customers.
#[derive(Serialize, ToSchema)]
pub struct CustomerList {
    data: Vec<CustomerView>,
    has_more: bool,
    /// Pass as `starting_after` to get the next page.
    next_cursor: Option<String>,
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerParams {
    /// Page size, 1–100 (default 20).
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    starting_after: Option<String>,
    /// Exact match (case-insensitive), through the keyed hash.
    email: Option<String>,
    /// Exact match of the E.164 number, through the keyed hash.
    phone: Option<String>,
}

/// Creates a customer (permission `customer.write`).
#[utoipa::path(
    post, path = "/v1/customers", tag = "customers", security(("bearer" = [])),
    params(("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CustomerBody,
    responses(
        (status = 201, body = CustomerView),
        (status = 409, description = "`external_id_taken`, `email_taken`, `phone_taken`", body = crate::Problem, content_type = PROBLEM),
        (status = 422, body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn create(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    ApiJson(b): ApiJson<CustomerBody>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    let (ext, input) = b.input();
    let Some(ext) = ext else {
        return Err(ApiError::validation(vec![azotte_domain::FieldError::new(
            "external_id",
            "missing_field",
            "the tenant's own id for the customer",
        )]));
    };
    let c = customers::create(&state.ctx, &scope, &ext, input).await?;
    Ok((StatusCode::CREATED, Json(c.into())))
}

/// Creates or replaces the customer with this external id (`201` created, `200` replaced).
#[utoipa::path(
    put, path = "/v1/customers/by-external-id/{external_id}", tag = "customers", security(("bearer" = [])),
    params(("external_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = CustomerBody,
    responses((status = 200, body = CustomerView), (status = 201, body = CustomerView), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn upsert(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path(external_id): Path<String>,
    ApiJson(b): ApiJson<CustomerBody>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    let (ext, input) = b.input();
    if ext.as_ref().is_some_and(|e| *e != external_id) {
        return Err(ApiError::validation(vec![azotte_domain::FieldError::new(
            "external_id",
            "external_id_mismatch",
            "the body names another external id than the path",
        )]));
    }
    let (c, created) = customers::upsert(&state.ctx, &scope, &external_id, input).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(c.into())))
}

/// Customers of the environment, a page at a time (permission `customer.read`).
#[utoipa::path(
    get, path = "/v1/customers", tag = "customers", security(("bearer" = [])),
    params(CustomerParams, ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = CustomerList), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn list(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    ApiQuery(p): ApiQuery<CustomerParams>,
) -> Result<Json<CustomerList>, ApiError> {
    let limit =
        azotte_domain::pagination::Limit::parse(p.limit).map_err(|e| ApiError::validation(vec![e]))?.get();
    let (rows, has_more) = customers::list(
        &state.ctx,
        &scope,
        limit,
        p.starting_after.as_deref(),
        p.email.as_deref(),
        p.phone.as_deref(),
    )
    .await?;
    let data: Vec<CustomerView> = rows.into_iter().map(Into::into).collect();
    let next_cursor = if has_more { data.last().map(|c| c.id.clone()) } else { None };
    Ok(Json(CustomerList { data, has_more, next_cursor }))
}

/// One customer (permission `customer.read`).
#[utoipa::path(
    get, path = "/v1/customers/{id}", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = CustomerView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_one(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    Ok(Json(customers::get(&state.ctx, &scope, &id).await?.into()))
}

/// Changes a customer (permission `customer.write`).
#[utoipa::path(
    patch, path = "/v1/customers/{id}", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = UpdateCustomer,
    responses((status = 200, body = CustomerView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM), (status = 422, body = crate::Problem, content_type = PROBLEM))
)]
async fn update(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UpdateCustomer>,
) -> Result<Json<CustomerView>, ApiError> {
    let mut e = ValidationErrors::default();
    let patch = CustomerPatch {
        email: clearable(b.email),
        phone: clearable(b.phone),
        first_name: clearable(b.first_name),
        last_name: clearable(b.last_name),
        address: clearable(b.address).map(|a| a.map(Into::into)),
        country: clearable(b.country),
        language: clearable(b.language),
        legal_type: e.check(b.legal_type.required("legal_type")).flatten(),
        company_name: clearable(b.company_name),
        tax_id: clearable(b.tax_id),
        active: e.check(b.active.required("active")).flatten(),
        metadata: clearable(b.metadata).map(Option::unwrap_or_default),
    };
    e.finish().map_err(|e| ApiError::validation(e.0))?;
    Ok(Json(customers::update(&state.ctx, &scope, &id, patch).await?.into()))
}

// ---------------------------------------------------------------------------------------------
// Payment methods

/// A PSP token to attach.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachMethod {
    /// The storefront whose PSP account created the token.
    storefront_id: String,
    /// That account; the token is usable only through it.
    psp_account_id: String,
    /// A token created client-side by the PSP, or a sandbox token (`tok_sandbox_…`). Never a
    /// card number.
    token: String,
    /// Make it the customer's default (the first method always is).
    #[serde(default)]
    default: bool,
}

/// A payment method: what can be shown of a card, never its number.
#[derive(Serialize, ToSchema)]
pub struct MethodView {
    id: String,
    customer_id: String,
    storefront_id: String,
    psp_account_id: String,
    brand: String,
    last4: String,
    exp_month: i32,
    exp_year: i32,
    /// Identifies the card across customers without revealing it.
    fingerprint: String,
    /// `active`, `inactive` or `deleted`.
    state: String,
    /// The card's expiry has passed (marked by a daily job).
    expired: bool,
    default: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PaymentMethodRow> for MethodView {
    fn from(p: PaymentMethodRow) -> Self {
        MethodView {
            id: p.id,
            customer_id: p.customer_id,
            storefront_id: p.storefront_id,
            psp_account_id: p.psp_account_id,
            brand: p.brand,
            last4: p.last4,
            exp_month: p.exp_month,
            exp_year: p.exp_year,
            fingerprint: p.fingerprint,
            state: p.state,
            expired: p.expired,
            default: p.is_default,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A customer's payment methods.
#[derive(Serialize, ToSchema)]
pub struct MethodList {
    data: Vec<MethodView>,
}

/// Attaches a PSP token to the customer (permission `customer.write`).
#[utoipa::path(
    post, path = "/v1/customers/{id}/payment-methods", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    request_body = AttachMethod,
    responses(
        (status = 201, body = MethodView),
        (status = 404, body = crate::Problem, content_type = PROBLEM),
        (status = 422, description = "`psp_account_not_in_storefront`, `invalid_token`, `connector_unavailable`", body = crate::Problem, content_type = PROBLEM)
    )
)]
async fn attach(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<AttachMethod>,
) -> Result<(StatusCode, Json<MethodView>), ApiError> {
    let input = AttachInput {
        storefront_id: b.storefront_id,
        psp_account_id: b.psp_account_id,
        token: b.token,
        make_default: b.default,
    };
    let pm = payment_methods::attach(&state.ctx, &scope, &id, input).await?;
    Ok((StatusCode::CREATED, Json(pm.into())))
}

/// The customer's payment methods (permission `customer.read`).
#[utoipa::path(
    get, path = "/v1/customers/{id}/payment-methods", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = MethodList), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn list_methods(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path(id): Path<String>,
) -> Result<Json<MethodList>, ApiError> {
    let all = payment_methods::list(&state.ctx, &scope, &id).await?;
    Ok(Json(MethodList { data: all.into_iter().map(Into::into).collect() }))
}

/// One payment method.
#[utoipa::path(
    get, path = "/v1/customers/{id}/payment-methods/{method_id}", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("method_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = MethodView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn get_method(
    State(state): State<AppState>,
    TenantAuth(scope): TenantAuth,
    Path((id, method_id)): Path<(String, String)>,
) -> Result<Json<MethodView>, ApiError> {
    Ok(Json(payment_methods::get(&state.ctx, &scope, &id, &method_id).await?.into()))
}

async fn change(
    state: &AppState,
    scope: &azotte_store::TenantScope,
    id: &str,
    method_id: &str,
    what: Change,
) -> Result<Json<MethodView>, ApiError> {
    Ok(Json(payment_methods::change(&state.ctx, scope, id, method_id, what).await?.into()))
}

/// Deletes a payment method (state `deleted`; it can no longer be used).
#[utoipa::path(
    delete, path = "/v1/customers/{id}/payment-methods/{method_id}", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("method_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = MethodView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn delete_method(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path((id, method_id)): Path<(String, String)>,
) -> Result<Json<MethodView>, ApiError> {
    change(&state, &scope, &id, &method_id, Change::Delete).await
}

/// Activates a payment method.
#[utoipa::path(
    post, path = "/v1/customers/{id}/payment-methods/{method_id}/activate", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("method_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = MethodView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn activate(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path((id, method_id)): Path<(String, String)>,
) -> Result<Json<MethodView>, ApiError> {
    change(&state, &scope, &id, &method_id, Change::Activate).await
}

/// Inactivates a payment method (it stops being the default).
#[utoipa::path(
    post, path = "/v1/customers/{id}/payment-methods/{method_id}/inactivate", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("method_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = MethodView), (status = 404, body = crate::Problem, content_type = PROBLEM))
)]
async fn inactivate(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path((id, method_id)): Path<(String, String)>,
) -> Result<Json<MethodView>, ApiError> {
    change(&state, &scope, &id, &method_id, Change::Inactivate).await
}

/// Makes a payment method the customer's default (`409 payment_method_not_usable` when it is
/// inactive or expired).
#[utoipa::path(
    post, path = "/v1/customers/{id}/payment-methods/{method_id}/default", tag = "customers", security(("bearer" = [])),
    params(("id" = String, Path), ("method_id" = String, Path), ("x-tn" = String, Header, description = "Tenant id or slug"), ("x-env" = String, Header, description = "Environment (sessions)")),
    responses((status = 200, body = MethodView), (status = 404, body = crate::Problem, content_type = PROBLEM), (status = 409, body = crate::Problem, content_type = PROBLEM))
)]
async fn make_default(
    State(state): State<AppState>,
    Allowed(scope, _): Allowed<need::CustomerWrite>,
    Path((id, method_id)): Path<(String, String)>,
) -> Result<Json<MethodView>, ApiError> {
    change(&state, &scope, &id, &method_id, Change::MakeDefault).await
}

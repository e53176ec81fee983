//! Custom roles of a tenant, and resolving role names to permissions.

use azotte_domain::permission::{tenant_role_permissions, Permission, PermissionSet};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query};
use sqlx::types::Json;

use crate::exec::Tx;
use crate::{Result, StoreError, TenantTx};

#[derive(Iden)]
enum Roles {
    Table,
    TenantId,
    Id,
    Name,
    Description,
    Permissions,
    CreatedAt,
    UpdatedAt,
}

/// A tenant's custom role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRole {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: PermissionSet,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    id: String,
    name: String,
    description: String,
    permissions: Json<Vec<String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<RoleRow> for CustomRole {
    type Error = StoreError;
    fn try_from(r: RoleRow) -> Result<Self> {
        let permissions = r
            .permissions
            .0
            .iter()
            .map(|p| p.parse::<Permission>().map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<_>>()?;
        Ok(CustomRole {
            id: r.id,
            name: r.name,
            description: r.description,
            permissions,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

fn select(tenant_id: &str) -> sea_query::SelectStatement {
    Query::select()
        .columns([
            Roles::Id,
            Roles::Name,
            Roles::Description,
            Roles::Permissions,
            Roles::CreatedAt,
            Roles::UpdatedAt,
        ])
        .from(Roles::Table)
        .and_where(Expr::col(Roles::TenantId).eq(tenant_id))
        .to_owned()
}

/// The permissions of a set of role names: built-in ones from the domain, custom ones from this
/// tenant's table. Unknown names grant nothing.
pub(crate) async fn resolve(tx: &mut Tx, tenant_id: &str, names: &[String]) -> Result<PermissionSet> {
    let mut set = PermissionSet::new();
    let mut custom = Vec::new();
    for n in names {
        match tenant_role_permissions(n) {
            Some(p) => set.extend(p),
            None => custom.push(n.clone()),
        }
    }
    if !custom.is_empty() {
        let q = select(tenant_id).and_where(Expr::col(Roles::Name).is_in(custom)).to_owned();
        for r in tx.fetch_all::<RoleRow>(&q).await? {
            set.extend(CustomRole::try_from(r)?.permissions);
        }
    }
    Ok(set)
}

/// Permissions of role names in the scope's tenant.
pub async fn permissions_of(tx: &mut TenantTx, names: &[String]) -> Result<PermissionSet> {
    let tenant = tx.scope().tenant_id().to_string();
    resolve(&mut tx.tx, &tenant, names).await
}

/// All custom roles of the tenant, by name.
pub async fn list(tx: &mut TenantTx) -> Result<Vec<CustomRole>> {
    let q = select(&tx.scope().tenant_id().to_string()).order_by(Roles::Name, Order::Asc).to_owned();
    tx.tx.fetch_all::<RoleRow>(&q).await?.into_iter().map(CustomRole::try_from).collect()
}

/// One custom role by id.
pub async fn get(tx: &mut TenantTx, id: &str) -> Result<Option<CustomRole>> {
    let q = select(&tx.scope().tenant_id().to_string()).and_where(Expr::col(Roles::Id).eq(id)).to_owned();
    tx.tx.fetch_optional::<RoleRow>(&q).await?.map(CustomRole::try_from).transpose()
}

fn perm_json(p: &PermissionSet) -> serde_json::Value {
    serde_json::json!(p.iter().map(|p| p.as_str()).collect::<Vec<_>>())
}

/// Creates a custom role.
pub async fn create(
    tx: &mut TenantTx,
    id: &str,
    name: &str,
    description: &str,
    permissions: &PermissionSet,
    now: DateTime<Utc>,
) -> Result<CustomRole> {
    let q = Query::insert()
        .into_table(Roles::Table)
        .columns([
            Roles::TenantId,
            Roles::Id,
            Roles::Name,
            Roles::Description,
            Roles::Permissions,
            Roles::CreatedAt,
            Roles::UpdatedAt,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            id.into(),
            name.into(),
            description.into(),
            perm_json(permissions).into(),
            now.into(),
            now.into(),
        ])
        .to_owned();
    tx.write(&q).await?;
    Ok(CustomRole {
        id: id.to_owned(),
        name: name.to_owned(),
        description: description.to_owned(),
        permissions: permissions.clone(),
        created_at: now,
        updated_at: now,
    })
}

/// Replaces a custom role's description and permissions.
pub async fn update(
    tx: &mut TenantTx,
    id: &str,
    description: Option<&str>,
    permissions: Option<&PermissionSet>,
    now: DateTime<Utc>,
) -> Result<Option<CustomRole>> {
    let mut q = Query::update();
    q.table(Roles::Table)
        .value(Roles::UpdatedAt, now)
        .and_where(Expr::col(Roles::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(Roles::Id).eq(id));
    if let Some(d) = description {
        q.value(Roles::Description, d);
    }
    if let Some(p) = permissions {
        q.value(Roles::Permissions, perm_json(p));
    }
    if tx.write(&q).await? == 0 {
        return Ok(None);
    }
    get(tx, id).await
}

/// Deletes a custom role; the caller checks it is unused.
pub async fn delete(tx: &mut TenantTx, id: &str) -> Result<bool> {
    let q = Query::delete()
        .from_table(Roles::Table)
        .and_where(Expr::col(Roles::TenantId).eq(tx.scope().tenant_id().to_string()))
        .and_where(Expr::col(Roles::Id).eq(id))
        .to_owned();
    Ok(tx.write(&q).await? > 0)
}

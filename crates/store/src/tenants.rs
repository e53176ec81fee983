//! The tenant registry and each tenant's environments.

use azotte_domain::id::TenantId;
use azotte_domain::tenant::{Environment, Mode, TenantName, TenantSlug, TenantStatus};
use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, Order, Query, SelectStatement};

use crate::exec::Tx;
use crate::{PlatformTx, Result, StoreError, TenantTx};

#[derive(Iden)]
pub(crate) enum Tenants {
    Table,
    Id,
    Slug,
    Name,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden)]
enum Environments {
    Table,
    TenantId,
    Environment,
    Mode,
    CreatedAt,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One environment of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRecord {
    pub environment: Environment,
    pub mode: Mode,
    pub created_at: DateTime<Utc>,
}

/// A page of a cursor-paginated list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub has_more: bool,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    slug: String,
    name: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;
    fn try_from(r: TenantRow) -> Result<Self> {
        Ok(Tenant {
            id: r.id.parse().map_err(|_| StoreError::Corrupt(format!("tenant id {}", r.id)))?,
            status: r
                .status
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("tenant status {}", r.status)))?,
            slug: r.slug,
            name: r.name,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EnvironmentRow {
    environment: String,
    mode: String,
    created_at: DateTime<Utc>,
}

fn select_tenants() -> SelectStatement {
    Query::select()
        .columns([
            Tenants::Id,
            Tenants::Slug,
            Tenants::Name,
            Tenants::Status,
            Tenants::CreatedAt,
            Tenants::UpdatedAt,
        ])
        .from(Tenants::Table)
        .to_owned()
}

/// Sets the tenant for row-level security for the rest of a platform transaction, so the
/// platform can write a tenant's own rows (its environments) when it creates the tenant.
pub(crate) async fn enter_tenant(tx: &mut Tx, id: TenantId) -> Result<()> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT set_config('azotte.tenant_id', $1, true)")
            .bind(id.to_string())
            .execute(t.conn()?)
            .await?;
    }
    Ok(())
}

/// Creates a tenant with its three environments.
pub async fn create(
    tx: &mut PlatformTx,
    slug: &TenantSlug,
    name: &TenantName,
    now: DateTime<Utc>,
) -> Result<(Tenant, Vec<EnvironmentRecord>)> {
    let tenant = Tenant {
        id: TenantId::new(),
        slug: slug.as_str().to_owned(),
        name: name.as_str().to_owned(),
        status: TenantStatus::Active,
        created_at: now,
        updated_at: now,
    };
    let insert = Query::insert()
        .into_table(Tenants::Table)
        .columns([
            Tenants::Id,
            Tenants::Slug,
            Tenants::Name,
            Tenants::Status,
            Tenants::CreatedAt,
            Tenants::UpdatedAt,
        ])
        .values_panic([
            tenant.id.to_string().into(),
            tenant.slug.clone().into(),
            tenant.name.clone().into(),
            tenant.status.as_str().into(),
            now.into(),
            now.into(),
        ])
        .to_owned();
    tx.write(&insert).await?;

    enter_tenant(&mut tx.tx, tenant.id).await?;
    let mut envs = Query::insert()
        .into_table(Environments::Table)
        .columns([
            Environments::TenantId,
            Environments::Environment,
            Environments::Mode,
            Environments::CreatedAt,
        ])
        .to_owned();
    for env in Environment::ALL {
        envs.values_panic([
            tenant.id.to_string().into(),
            env.as_str().into(),
            env.mode().as_str().into(),
            now.into(),
        ]);
    }
    tx.write(&envs).await?;
    let environments = Environment::ALL
        .iter()
        .map(|&environment| EnvironmentRecord { environment, mode: environment.mode(), created_at: now })
        .collect();
    Ok((tenant, environments))
}

/// One tenant by id.
pub async fn get(tx: &mut PlatformTx, id: TenantId) -> Result<Option<Tenant>> {
    find_by_id(&mut tx.tx, id).await
}

pub(crate) async fn find_by_id(tx: &mut Tx, id: TenantId) -> Result<Option<Tenant>> {
    let q = select_tenants().and_where(Expr::col(Tenants::Id).eq(id.to_string())).to_owned();
    tx.fetch_optional::<TenantRow>(&q).await?.map(Tenant::try_from).transpose()
}

pub(crate) async fn find_by_slug(tx: &mut Tx, slug: &str) -> Result<Option<Tenant>> {
    let q = select_tenants().and_where(Expr::col(Tenants::Slug).eq(slug)).to_owned();
    tx.fetch_optional::<TenantRow>(&q).await?.map(Tenant::try_from).transpose()
}

/// Tenants in id (creation) order, after `starting_after` if given.
pub async fn list(tx: &mut PlatformTx, limit: u32, starting_after: Option<TenantId>) -> Result<Page<Tenant>> {
    let mut q = select_tenants().order_by(Tenants::Id, Order::Asc).limit(u64::from(limit) + 1).to_owned();
    if let Some(after) = starting_after {
        q.and_where(Expr::col(Tenants::Id).gt(after.to_string()));
    }
    let mut items = tx
        .tx
        .fetch_all::<TenantRow>(&q)
        .await?
        .into_iter()
        .map(Tenant::try_from)
        .collect::<Result<Vec<_>>>()?;
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, has_more })
}

/// Changes a tenant's name and/or status; `None` when there is no such tenant.
pub async fn update(
    tx: &mut PlatformTx,
    id: TenantId,
    name: Option<&TenantName>,
    status: Option<TenantStatus>,
    now: DateTime<Utc>,
) -> Result<Option<Tenant>> {
    let mut q = Query::update();
    q.table(Tenants::Table)
        .value(Tenants::UpdatedAt, now)
        .and_where(Expr::col(Tenants::Id).eq(id.to_string()));
    if let Some(name) = name {
        q.value(Tenants::Name, name.as_str());
    }
    if let Some(status) = status {
        q.value(Tenants::Status, status.as_str());
    }
    if tx.write(&q).await? == 0 {
        return Ok(None);
    }
    find_by_id(&mut tx.tx, id).await
}

/// A tenant's environments, read inside that tenant's row-level-security scope.
pub async fn environments(tx: &mut PlatformTx, id: TenantId) -> Result<Vec<EnvironmentRecord>> {
    enter_tenant(&mut tx.tx, id).await?;
    let q = Query::select()
        .columns([Environments::Environment, Environments::Mode, Environments::CreatedAt])
        .from(Environments::Table)
        .and_where(Expr::col(Environments::TenantId).eq(id.to_string()))
        .to_owned();
    let mut envs: Vec<EnvironmentRecord> =
        tx.tx.fetch_all::<EnvironmentRow>(&q).await?.into_iter().map(env_record).collect::<Result<_>>()?;
    // Development, staging, production: the order people think of them in.
    envs.sort_by_key(|e| Environment::ALL.iter().position(|x| *x == e.environment));
    Ok(envs)
}

fn env_record(r: EnvironmentRow) -> Result<EnvironmentRecord> {
    Ok(EnvironmentRecord {
        environment: r
            .environment
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("environment {}", r.environment)))?,
        mode: r.mode.parse().map_err(|_| StoreError::Corrupt(format!("mode {}", r.mode)))?,
        created_at: r.created_at,
    })
}

/// The scope's own tenant and environment: the tenant-scoped read every credential may do.
pub async fn current(tx: &mut TenantTx) -> Result<(Tenant, EnvironmentRecord)> {
    let scope = tx.scope().clone();
    let tenant = find_by_id(&mut tx.tx, scope.tenant_id())
        .await?
        .ok_or_else(|| StoreError::Corrupt("scope names a missing tenant".into()))?;
    let q = Query::select()
        .columns([Environments::Environment, Environments::Mode, Environments::CreatedAt])
        .from(Environments::Table)
        .and_where(Expr::col(Environments::TenantId).eq(scope.tenant_id().to_string()))
        .and_where(Expr::col(Environments::Environment).eq(scope.environment().as_str()))
        .to_owned();
    let env = env_record(tx.tx.fetch_one::<EnvironmentRow>(&q).await?)?;
    Ok((tenant, env))
}

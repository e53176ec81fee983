//! Operating payments: the tenant's safe-mode switch and the PSP webhook events received.

use chrono::{DateTime, Utc};
use sea_query::{Expr, Iden, OnConflict, Query};

use crate::{Result, TenantTx};

#[derive(Iden, Clone, Copy)]
enum TenantSafeMode {
    Table,
    TenantId,
    Reason,
    EnabledBy,
    EnabledAt,
}

/// A tenant in safe mode: no money moves for any of its environments.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SafeMode {
    pub reason: String,
    /// Who switched it on (a principal id).
    pub enabled_by: String,
    pub enabled_at: DateTime<Utc>,
}

/// The scope's tenant's safe mode, if it is on.
pub async fn safe_mode(tx: &mut TenantTx) -> Result<Option<SafeMode>> {
    let q = Query::select()
        .columns([TenantSafeMode::Reason, TenantSafeMode::EnabledBy, TenantSafeMode::EnabledAt])
        .from(TenantSafeMode::Table)
        .and_where(Expr::col(TenantSafeMode::TenantId).eq(tx.scope().tenant_id().to_string()))
        .to_owned();
    tx.tx.fetch_optional::<SafeMode>(&q).await
}

/// Switches safe mode on; `false` (and nothing changed) when it was on already.
pub async fn enable_safe_mode(tx: &mut TenantTx, mode: &SafeMode) -> Result<bool> {
    let q = Query::insert()
        .into_table(TenantSafeMode::Table)
        .columns([
            TenantSafeMode::TenantId,
            TenantSafeMode::Reason,
            TenantSafeMode::EnabledBy,
            TenantSafeMode::EnabledAt,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            mode.reason.clone().into(),
            mode.enabled_by.clone().into(),
            mode.enabled_at.into(),
        ])
        .on_conflict(OnConflict::column(TenantSafeMode::TenantId).do_nothing().to_owned())
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

/// Switches safe mode off; `false` when it was off already.
pub async fn disable_safe_mode(tx: &mut TenantTx) -> Result<bool> {
    let q = Query::delete()
        .from_table(TenantSafeMode::Table)
        .and_where(Expr::col(TenantSafeMode::TenantId).eq(tx.scope().tenant_id().to_string()))
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

#[derive(Iden, Clone, Copy)]
enum PspWebhookEvents {
    Table,
    TenantId,
    Environment,
    PspAccountId,
    EventId,
    EventType,
    EventCreated,
    ReceivedAt,
}

/// Records a PSP event as received; `false` when it was received before (a redelivery).
pub async fn record_webhook_event(
    tx: &mut TenantTx,
    psp_account_id: &str,
    event_id: &str,
    event_type: &str,
    event_created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let q = Query::insert()
        .into_table(PspWebhookEvents::Table)
        .columns([
            PspWebhookEvents::TenantId,
            PspWebhookEvents::Environment,
            PspWebhookEvents::PspAccountId,
            PspWebhookEvents::EventId,
            PspWebhookEvents::EventType,
            PspWebhookEvents::EventCreated,
            PspWebhookEvents::ReceivedAt,
        ])
        .values_panic([
            tx.scope().tenant_id().to_string().into(),
            tx.scope().environment().as_str().into(),
            psp_account_id.into(),
            event_id.into(),
            event_type.into(),
            event_created.into(),
            now.into(),
        ])
        .on_conflict(
            OnConflict::columns([
                PspWebhookEvents::TenantId,
                PspWebhookEvents::Environment,
                PspWebhookEvents::PspAccountId,
                PspWebhookEvents::EventId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .to_owned();
    Ok(tx.write(&q).await? == 1)
}

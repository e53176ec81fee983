//! Proration of a plan change (replace) in integer minor units (DESIGN.md section 5, issue 9).
//! Pure rules; no I/O.
//!
//! **Rounding rule: half up.** A prorated part is `amount × part / whole` in exact integer
//! arithmetic (`i128`, no floats), rounded to the nearest minor unit with ties going up
//! (`⌊(2 × amount × part + whole) / (2 × whole)⌋`). Every part is off by at most half a unit, so
//! the parts of any split of a period into `k` pieces add up to the full price within `k / 2`
//! units — at most one unit per split point — and a part is never negative nor more than the
//! price. Time is counted in whole seconds.
//!
//! **Immediate change (`immediate_prorated`).** At `now`, inside the period `[start, end)`, the
//! unused time is `end − now`. The customer is credited the old price for the unused time and
//! charged the new price for it: `credit = prorate(old, unused, whole)`, `charge =
//! prorate(new, unused, whole)`. The period end and the billing anchor do not move; renewals
//! charge the new price from the period end on.
//!
//! - An **upgrade** (new price above the old) is due `charge − credit` now (never negative:
//!   rounding is monotone in the amount).
//! - A **downgrade** (new price below the old) or a **switch** at the same price never charges
//!   anything. The credit beyond the new price's remainder (`credit_unused`) is **not carried**:
//!   there is no customer balance to carry it in, and refunding part of a payment for a plan change
//!   invites disputes. The preview shows it before the customer commits, and a storefront that wants
//!   customers to keep what they paid for chooses `at_period_end` (docs/decisions/0009-proration.md).
//!
//! **Change at the period end (`at_period_end`).** Nothing is credited or charged now; the
//! change takes effect at the period end, and the renewal there charges the new price.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{wire_enum, ReplacePolicy};
use crate::subscription::{State, SubscriptionStatus};

wire_enum!(
    /// How the new price compares with the old, per period.
    ChangeKind { Upgrade => "upgrade", Downgrade => "downgrade", Switch => "switch" }
);

/// `amount × part / whole` in minor units, rounded half up; `part` is clamped to `0..=whole`,
/// so the result lies in `0..=amount` for a non-negative `amount`. A `whole` of zero or less (an
/// empty period) prorates to nothing.
pub fn prorate(amount: i64, part: i64, whole: i64) -> i64 {
    if whole <= 0 || amount <= 0 {
        return 0;
    }
    let part = i128::from(part.clamp(0, whole));
    let (amount, whole) = (i128::from(amount), i128::from(whole));
    let rounded = (2 * amount * part + whole) / (2 * whole);
    // Bounded by `amount`, which fits.
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// What a plan change costs and when it takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quote {
    pub policy: ReplacePolicy,
    pub kind: ChangeKind,
    /// Credit for the unused time of the old price.
    pub credit: i64,
    /// The new price for the rest of the period.
    pub charge: i64,
    /// Charged now: `charge − credit` for an upgrade, else 0.
    pub amount_due: i64,
    /// Credit left after a downgrade, not carried (see the module docs).
    pub credit_unused: i64,
    /// When the new price and its entitlements take effect.
    pub effective_at: DateTime<Utc>,
    /// The end of the current period, unchanged by the change: the next renewal, at the new
    /// price.
    pub period_end: DateTime<Utc>,
    /// Seconds of the period left when the change takes effect, and of the whole period.
    pub unused_seconds: i64,
    pub period_seconds: i64,
}

/// Prices changing from `old` to `new` (per period, minor units) at `now` inside the period
/// `[start, end)`, under `policy`. A `now` past the period end (a renewal not yet processed)
/// leaves no unused time: nothing is credited or charged.
pub fn quote(
    policy: ReplacePolicy,
    old: i64,
    new: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Quote {
    let kind = match new.cmp(&old) {
        std::cmp::Ordering::Greater => ChangeKind::Upgrade,
        std::cmp::Ordering::Less => ChangeKind::Downgrade,
        std::cmp::Ordering::Equal => ChangeKind::Switch,
    };
    let whole = (end - start).num_seconds().max(0);
    let unused = (end - now.max(start)).num_seconds().clamp(0, whole);
    match policy {
        ReplacePolicy::AtPeriodEnd => Quote {
            policy,
            kind,
            credit: 0,
            charge: 0,
            amount_due: 0,
            credit_unused: 0,
            effective_at: end.max(now),
            period_end: end,
            unused_seconds: 0,
            period_seconds: whole,
        },
        ReplacePolicy::ImmediateProrated => {
            let credit = prorate(old, unused, whole);
            let charge = prorate(new, unused, whole);
            let (amount_due, credit_unused) = match kind {
                ChangeKind::Upgrade => ((charge - credit).max(0), 0),
                ChangeKind::Downgrade | ChangeKind::Switch => (0, (credit - charge).max(0)),
            };
            Quote {
                policy,
                kind,
                credit,
                charge,
                amount_due,
                credit_unused,
                effective_at: now,
                period_end: end,
                unused_seconds: unused,
                period_seconds: whole,
            }
        }
    }
}

/// Whether a subscription may change plans at `now`; the error is a stable code. Only an
/// `active` subscription inside its paid period may: `expired` is final; a trialing, past-due,
/// paused or canceled one is `not_replaceable` (convert, settle, resume or reactivate first);
/// once the period has ended the renewal comes first (`renewal_due`), so a change never races
/// the renewal that charges the next period.
pub fn replaceable(state: &State, now: DateTime<Utc>) -> Result<(), &'static str> {
    match state.status {
        SubscriptionStatus::Expired => Err("expired"),
        SubscriptionStatus::Active if now >= state.period_end => Err("renewal_due"),
        SubscriptionStatus::Active => Ok(()),
        _ => Err("not_replaceable"),
    }
}

#[cfg(test)]
#[path = "proration_tests.rs"]
mod tests;

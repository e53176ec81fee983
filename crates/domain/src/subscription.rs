//! The subscription lifecycle (DESIGN.md section 5): states, the transition table, calendar-correct
//! billing periods, access and trial eligibility. Pure rules; no I/O.
//!
//! A subscription is `trialing` or `active` from [`start`], and moves only through [`apply`]:
//!
//! | from                                   | event                 | to                               |
//! |----------------------------------------|-----------------------|----------------------------------|
//! | trialing (trial over)                  | `TrialConverted`      | active, first paid period        |
//! | trialing (trial over)                  | `TrialLapsed`         | expired                          |
//! | active, past_due                       | `RenewalSucceeded`    | active, next period              |
//! | active, past_due                       | `RenewalFailed`       | past_due, same period            |
//! | past_due                               | `DunningExhausted(_)` | expired, or canceled now         |
//! | active, trialing (trial not over)      | `Pause`               | paused                           |
//! | paused                                 | `Resume`              | active or trialing, dates moved  |
//! | trialing, active, past_due, paused     | `Cancel(_)`           | canceled                         |
//! | canceled (not immediately, not ended)  | `Reactivate`          | active or trialing               |
//! | canceled (ended)                       | `PeriodEnded`         | expired                          |
//! | active, trialing                       | `Defer(d)`            | same, period end + d             |
//! | active, trialing, canceled             | `Extend(d)`           | same, period end (and ends_at) + d |
//!
//! Everything else is an [`IllegalTransition`] with a stable reason code; `expired` is terminal.
//! A `past_due` subscription is neither deferred nor extended (`renewal_unpaid`): its renewal is
//! due and invoiced for the period that starts at its period end; moving that end would leave
//! the invoice for dates the subscription no longer has.
//!
//! **Periods.** The *anchor* is the start of the first paid period; period boundaries are
//! [`boundary`]`(anchor, period, k)`, always computed from the anchor so month-end clamping never
//! drifts (Jan 31 → Feb 29 → Mar 31). [`State`] keeps `period_end == boundary(anchor, period,
//! periods)` at all times. While trialing, the trial is period 0: `period_end == trial_end ==
//! anchor`. When `Defer`, `Extend` or `Resume` moves the period end, the subscription is
//! *re-anchored* at the moved end (`anchor = period_end`, `periods = 0`): renewals then follow the
//! new date (a month plan deferred from the 31st to the 3rd renews on the 3rd). Each new period
//! starts exactly where the previous one ended.
//!
//! **Trial.** `trial_end` is kept after conversion as a record; the current period is the trial
//! exactly when `trial_end == Some(period_end)` (see [`State::in_trial`]): conversion moves the
//! period end past it, and every move of a trial period moves both.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{wire_enum, BillingPeriod, DunningPolicy, EndAction, PeriodUnit};

wire_enum!(
    /// Where a subscription stands.
    SubscriptionStatus {
        Trialing => "trialing",
        Active => "active",
        PastDue => "past_due",
        Paused => "paused",
        Canceled => "canceled",
        Expired => "expired",
    }
);
wire_enum!(
    /// How a cancellation takes effect: at the end of the paid period, or now.
    CancelMethod { EndOfPeriod => "end_of_period", Immediate => "immediate" }
);
wire_enum!(
    /// What a customer may use of a subscription now. [`access`] answers `full` or `none`:
    /// `limited` is reserved for a grace policy or channel that grants part of a bundle.
    Access { Full => "full", Limited => "limited", None => "none" }
);

impl SubscriptionStatus {
    /// Whether nothing can move the subscription any more.
    pub fn is_terminal(self) -> bool {
        self == SubscriptionStatus::Expired
    }
}

/// The shortest and longest `Defer` / `Extend`.
pub const MIN_SHIFT_DAYS: i64 = 1;
/// See [`MIN_SHIFT_DAYS`].
pub const MAX_SHIFT_DAYS: i64 = 365;

/// Something that happens to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The trial ended and the first charge succeeded: the first paid period starts at `trial_end`.
    TrialConverted,
    /// The trial ended without a usable payment.
    TrialLapsed,
    /// A renewal was paid: the next period starts where the current one ends.
    RenewalSucceeded,
    /// A renewal charge failed: past due, the period does not advance.
    RenewalFailed,
    /// Every dunning retry failed: expire, or cancel now.
    DunningExhausted(EndAction),
    /// Pause: no access, and the paused time is not counted against the period.
    Pause,
    /// Resume: period end (and trial end in a trial) move later by the paused duration.
    Resume,
    /// Cancel at period end or now.
    Cancel(CancelMethod),
    /// Undo an end-of-period cancellation before the period ends.
    Reactivate,
    /// A canceled subscription's `ends_at` has passed.
    PeriodEnded,
    /// Support: move the next renewal later (1 to 365 days).
    Defer(Duration),
    /// Goodwill: like `Defer`, and a canceled subscription's `ends_at` moves too.
    Extend(Duration),
}

impl Event {
    /// A stable snake_case name, for journals and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Event::TrialConverted => "trial_converted",
            Event::TrialLapsed => "trial_lapsed",
            Event::RenewalSucceeded => "renewal_succeeded",
            Event::RenewalFailed => "renewal_failed",
            Event::DunningExhausted(_) => "dunning_exhausted",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::Cancel(_) => "cancel",
            Event::Reactivate => "reactivate",
            Event::PeriodEnded => "period_ended",
            Event::Defer(_) => "defer",
            Event::Extend(_) => "extend",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::DunningExhausted(a) => write!(f, "dunning_exhausted({a})"),
            Event::Cancel(m) => write!(f, "cancel({m})"),
            Event::Defer(d) | Event::Extend(d) => write!(f, "{}({}s)", self.name(), d.num_seconds()),
            _ => f.write_str(self.name()),
        }
    }
}

/// A subscription's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub status: SubscriptionStatus,
    /// Start of the current period (the trial's start while trialing).
    pub period_start: DateTime<Utc>,
    /// End of the current period: the next renewal is due then.
    pub period_end: DateTime<Utc>,
    /// Where period boundaries are counted from: the first paid period's start, or the moved
    /// period end after a `Defer`, `Extend` or `Resume`.
    pub anchor: DateTime<Utc>,
    /// Periods completed since the anchor: `period_end == boundary(anchor, period, periods)`.
    pub periods: u32,
    /// End of the trial, if there was one (kept after conversion).
    pub trial_end: Option<DateTime<Utc>>,
    /// When a canceled or expired subscription ends or ended.
    pub ends_at: Option<DateTime<Utc>>,
    /// Canceled with immediate effect (or by dunning): cannot be reactivated.
    pub canceled_immediately: bool,
    /// When a paused subscription was paused.
    pub paused_at: Option<DateTime<Utc>>,
}

impl State {
    /// Whether the subscription still counts for its customer at `now`: not expired, and not
    /// canceled past its `ends_at` (a paused one is live). For trial eligibility.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        match self.status {
            SubscriptionStatus::Expired => false,
            SubscriptionStatus::Canceled => self.ends_at.is_some_and(|e| now < e),
            _ => true,
        }
    }

    /// Whether the current period is the trial.
    pub fn in_trial(&self) -> bool {
        self.trial_end == Some(self.period_end)
    }

    /// Checks the invariants every reachable state keeps (also useful on rows read back from
    /// storage); the error is a stable code.
    pub fn check(&self, period: BillingPeriod) -> Result<(), &'static str> {
        use SubscriptionStatus::*;
        if self.period_start >= self.period_end {
            return Err("empty_period");
        }
        if self.period_end != boundary(self.anchor, period, self.periods) {
            return Err("period_off_anchor");
        }
        if (self.status == Paused) != self.paused_at.is_some() {
            return Err("paused_at_mismatch");
        }
        if matches!(self.status, Canceled | Expired) != self.ends_at.is_some() {
            return Err("ends_at_mismatch");
        }
        if self.canceled_immediately && !matches!(self.status, Canceled | Expired) {
            return Err("canceled_immediately_mismatch");
        }
        if self.status == Trialing && !self.in_trial() {
            return Err("trialing_without_trial");
        }
        if matches!(self.status, Active | PastDue) && self.in_trial() {
            return Err("active_in_trial");
        }
        Ok(())
    }
}

/// An event that does not apply to a subscription in its current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} subscription cannot take {event}: {reason}")]
pub struct IllegalTransition {
    pub from: SubscriptionStatus,
    pub event: Event,
    /// A stable snake_case code: `expired`, `not_trialing`, `trial_not_ended`, `not_renewable`,
    /// `not_past_due`, `not_pausable`, `trial_ended`, `not_paused`, `already_canceled`,
    /// `not_canceled`, `canceled_immediately`, `period_ended`, `period_not_ended`,
    /// `not_deferrable`, `not_extendable`, `duration_out_of_range`.
    pub reason: &'static str,
}

/// A new subscription: trialing until `now + trial_days` when `trial_days > 0` (the first paid
/// period then starts at `trial_end`), else active with its first period starting `now`.
pub fn start(now: DateTime<Utc>, period: BillingPeriod, trial_days: u32) -> State {
    let (status, trial_end, anchor, periods) = if trial_days > 0 {
        let end = add(now, Duration::days(i64::from(trial_days)));
        (SubscriptionStatus::Trialing, Some(end), end, 0)
    } else {
        (SubscriptionStatus::Active, None, now, 1)
    };
    State {
        status,
        period_start: now,
        period_end: boundary(anchor, period, periods),
        anchor,
        periods,
        trial_end,
        ends_at: None,
        canceled_immediately: false,
        paused_at: None,
    }
}

/// Applies `event` at `now`; an [`IllegalTransition`] for anything the table (module docs) does
/// not allow. `state` is never modified: on error nothing has changed.
pub fn apply(
    state: &State,
    event: &Event,
    now: DateTime<Utc>,
    period: BillingPeriod,
) -> Result<State, IllegalTransition> {
    use SubscriptionStatus::*;
    let refuse = |reason| Err(IllegalTransition { from: state.status, event: event.clone(), reason });
    if state.status.is_terminal() {
        return refuse("expired");
    }
    let mut s = state.clone();
    match event {
        Event::TrialConverted | Event::TrialLapsed => {
            if s.status != Trialing {
                return refuse("not_trialing");
            }
            if s.trial_end.is_some_and(|t| now < t) {
                return refuse("trial_not_ended");
            }
            if *event == Event::TrialConverted {
                s.status = Active;
                next_period(&mut s, period);
            } else {
                s.status = Expired;
                s.ends_at = Some(now);
            }
        }
        Event::RenewalSucceeded => {
            if !matches!(s.status, Active | PastDue) {
                return refuse("not_renewable");
            }
            s.status = Active;
            next_period(&mut s, period);
        }
        Event::RenewalFailed => {
            if !matches!(s.status, Active | PastDue) {
                return refuse("not_renewable");
            }
            s.status = PastDue;
        }
        Event::DunningExhausted(action) => {
            if s.status != PastDue {
                return refuse("not_past_due");
            }
            s.ends_at = Some(now);
            match action {
                EndAction::Expire => s.status = Expired,
                EndAction::Cancel => {
                    s.status = Canceled;
                    // Nothing paid is left to return to.
                    s.canceled_immediately = true;
                }
            }
        }
        Event::Pause => {
            if !matches!(s.status, Active | Trialing) {
                return refuse("not_pausable");
            }
            if s.status == Trialing && s.trial_end.is_some_and(|t| now >= t) {
                return refuse("trial_ended");
            }
            s.status = Paused;
            s.paused_at = Some(now);
        }
        Event::Resume => {
            if s.status != Paused {
                return refuse("not_paused");
            }
            resume(&mut s, now);
        }
        Event::Cancel(method) => {
            match s.status {
                Canceled => return refuse("already_canceled"),
                Trialing | Active | PastDue | Paused => {}
                Expired => return refuse("expired"),
            }
            match method {
                CancelMethod::Immediate => {
                    s.ends_at = Some(now);
                    s.canceled_immediately = true;
                    s.paused_at = None;
                }
                CancelMethod::EndOfPeriod => {
                    // A paused subscription keeps the time it had left when paused.
                    if s.status == Paused {
                        resume(&mut s, now);
                    }
                    // A past-due period may already be over: the cancellation then ends now.
                    s.ends_at = Some(s.period_end.max(now));
                }
            }
            s.status = Canceled;
        }
        Event::Reactivate => {
            if s.status != Canceled {
                return refuse("not_canceled");
            }
            if s.canceled_immediately {
                return refuse("canceled_immediately");
            }
            if s.ends_at.is_none_or(|e| now >= e) {
                return refuse("period_ended");
            }
            s.ends_at = None;
            s.status = if s.in_trial() && s.trial_end.is_some_and(|t| t > now) { Trialing } else { Active };
        }
        Event::PeriodEnded => {
            if s.status != Canceled {
                return refuse("not_canceled");
            }
            if s.ends_at.is_some_and(|e| now < e) {
                return refuse("period_not_ended");
            }
            s.status = Expired;
        }
        Event::Defer(d) | Event::Extend(d) => {
            let extend = matches!(event, Event::Extend(_));
            if *d < Duration::days(MIN_SHIFT_DAYS) || *d > Duration::days(MAX_SHIFT_DAYS) {
                return refuse("duration_out_of_range");
            }
            match s.status {
                Active | Trialing => {}
                PastDue => return refuse("renewal_unpaid"),
                Canceled if extend => {
                    if s.ends_at.is_none_or(|e| now >= e) {
                        return refuse("period_ended");
                    }
                    s.ends_at = s.ends_at.map(|e| add(e, *d));
                }
                _ => return refuse(if extend { "not_extendable" } else { "not_deferrable" }),
            }
            shift(&mut s, *d);
        }
    }
    Ok(s)
}

/// Starts the next period where the current one ends.
fn next_period(s: &mut State, period: BillingPeriod) {
    s.period_start = s.period_end;
    s.periods = s.periods.saturating_add(1);
    s.period_end = boundary(s.anchor, period, s.periods);
}

/// Moves the period end (and a trial's end) later by `d`, re-anchoring there.
fn shift(s: &mut State, d: Duration) {
    let in_trial = s.in_trial();
    s.period_end = add(s.period_end, d);
    if in_trial {
        s.trial_end = Some(s.period_end);
    }
    s.anchor = s.period_end;
    s.periods = 0;
}

/// Unpauses: the status returns to trialing (in a trial) or active, and the paused time is added.
fn resume(s: &mut State, now: DateTime<Utc>) {
    let paused = s.paused_at.map_or(Duration::zero(), |p| now - p).max(Duration::zero());
    s.paused_at = None;
    s.status = if s.in_trial() { SubscriptionStatus::Trialing } else { SubscriptionStatus::Active };
    if paused > Duration::zero() {
        shift(s, paused);
    }
}

/// `t + d`, saturating at the end of time rather than overflowing.
fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The `n`-th period boundary from `anchor`, calendar-correct. Days and weeks add `count × n`
/// days (× 7); months and years keep the anchor's day of month and time of day, clamped to the
/// month's last day (anchor Jan 31: Feb 29 in a leap year, Mar 31, Apr 30 …), computed from the
/// anchor every time. A `count` of 0 counts as 1; past the end of chrono's calendar it saturates.
pub fn boundary(anchor: DateTime<Utc>, period: BillingPeriod, n: u32) -> DateTime<Utc> {
    let steps = i64::from(period.count.max(1)) * i64::from(n);
    match period.unit {
        PeriodUnit::Day => add_days(anchor, steps),
        PeriodUnit::Week => add_days(anchor, steps * 7),
        PeriodUnit::Month => add_months(anchor, steps),
        PeriodUnit::Year => add_months(anchor, steps * 12),
    }
}

fn add_days(t: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    Duration::try_days(days).and_then(|d| t.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn add_months(t: DateTime<Utc>, months: i64) -> DateTime<Utc> {
    let total = i64::from(t.year()) * 12 + i64::from(t.month0()) + months;
    let (Ok(year), Ok(month0)) = (i32::try_from(total.div_euclid(12)), u32::try_from(total.rem_euclid(12)))
    else {
        return DateTime::<Utc>::MAX_UTC;
    };
    let day = t.day().min(days_in_month(year, month0 + 1));
    NaiveDate::from_ymd_opt(year, month0 + 1, day)
        .map(|d| d.and_time(t.time()).and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Days in a month (1-based), 28 to 31.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    (28..=31).rev().find(|d| NaiveDate::from_ymd_opt(year, month, *d).is_some()).unwrap_or(28)
}

/// What the customer may use now: trialing and active full; past due full while
/// `now < period_end + grace_days` if the policy keeps access during grace, else none; paused
/// none; canceled full until `ends_at`, none after; expired none.
pub fn access(state: &State, now: DateTime<Utc>, dunning: &DunningPolicy) -> Access {
    if access_until(state, now, dunning).is_some() {
        Access::Full
    } else {
        Access::None
    }
}

/// Until when the current access is paid for, `None` when there is no access. Trialing: the
/// trial's end; active: the period end (a renewal moves it on; it can lie in the past while an
/// overdue renewal has not been processed, and access stays full until its outcome is applied);
/// past due: the end of grace; canceled: `ends_at`.
pub fn access_until(state: &State, now: DateTime<Utc>, dunning: &DunningPolicy) -> Option<DateTime<Utc>> {
    use SubscriptionStatus::*;
    match state.status {
        Trialing | Active => Some(state.period_end),
        PastDue => {
            let grace_end = add_days(state.period_end, i64::from(dunning.grace_days));
            (dunning.access_during_grace && now < grace_end).then_some(grace_end)
        }
        Canceled => state.ends_at.filter(|e| now < *e),
        Paused | Expired => None,
    }
}

/// [`access_until`] with a grace extension: a past-due subscription whose renewal retry was
/// deferred (tenant safe mode, the PSP down) keeps access until `extended_until` even past its
/// policy's grace — an outage must not churn customers. Nothing changes where the policy gives no
/// access during grace, nor in any other state.
pub fn access_until_extended(
    state: &State,
    now: DateTime<Utc>,
    dunning: &DunningPolicy,
    extended_until: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let base = access_until(state, now, dunning);
    match extended_until {
        Some(e) if state.status == SubscriptionStatus::PastDue && dunning.access_during_grace && now < e => {
            Some(base.map_or(e, |b| b.max(e)))
        }
        _ => base,
    }
}

/// What a customer has had of a bundle family, for trial eligibility.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FamilyHistory {
    /// Any trial of the family, ever.
    pub had_trial: bool,
    /// A subscription of the family that is not expired (and not canceled past its end).
    pub has_live_subscription: bool,
    /// When the customer's last trial or subscription of the family ended.
    pub last_ended_at: Option<DateTime<Utc>>,
}

/// Whether a trial may be offered, and why (stable codes, for the journal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrialDecision {
    pub eligible: bool,
    /// `eligible`, or every reason against: `trial_already_used`, `subscription_active`,
    /// `cooldown_active` (in that order).
    pub reasons: Vec<&'static str>,
}

/// Trial eligibility per bundle family: one trial per family per customer, none while a
/// subscription of the family is live, and none within `cooldown_days` after the last one ended.
pub fn trial_eligibility(history: &FamilyHistory, now: DateTime<Utc>, cooldown_days: u32) -> TrialDecision {
    let mut reasons = Vec::new();
    if history.had_trial {
        reasons.push("trial_already_used");
    }
    if history.has_live_subscription {
        reasons.push("subscription_active");
    }
    if history.last_ended_at.is_some_and(|e| now < add_days(e, i64::from(cooldown_days))) {
        reasons.push("cooldown_active");
    }
    let eligible = reasons.is_empty();
    if eligible {
        reasons.push("eligible");
    }
    TrialDecision { eligible, reasons }
}

#[cfg(test)]
#[path = "subscription_tests.rs"]
mod tests;

use chrono::NaiveDate;
use proptest::prelude::*;

use super::*;
use SubscriptionStatus::*;

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(9, 30, 0).unwrap().and_utc()
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

const MONTHLY: BillingPeriod = BillingPeriod { unit: PeriodUnit::Month, count: 1 };

fn ok(s: &State, e: Event, now: DateTime<Utc>) -> State {
    let t = apply(s, &e, now, MONTHLY).unwrap_or_else(|err| panic!("{e}: {err}"));
    t.check(MONTHLY).unwrap_or_else(|c| panic!("{e} left {c}: {t:?}"));
    t
}

fn refused(s: &State, e: Event, now: DateTime<Utc>) -> &'static str {
    let err = apply(s, &e, now, MONTHLY).expect_err("must be refused");
    assert_eq!((err.from, &err.event), (s.status, &e));
    err.reason
}

// ---- Examples of each transition -------------------------------------------------------------

#[test]
fn start_without_a_trial_is_active_for_one_period() {
    let s = start(at(2028, 1, 31), MONTHLY, 0);
    assert_eq!(s.status, Active);
    assert_eq!((s.period_start, s.period_end), (at(2028, 1, 31), at(2028, 2, 29)));
    assert_eq!((s.anchor, s.periods, s.trial_end), (at(2028, 1, 31), 1, None));
    s.check(MONTHLY).unwrap();
}

#[test]
fn start_with_a_trial_anchors_at_the_trial_end() {
    let s = start(at(2028, 1, 1), MONTHLY, 14);
    assert_eq!(s.status, Trialing);
    assert_eq!(s.trial_end, Some(at(2028, 1, 15)));
    assert_eq!(
        (s.period_start, s.period_end, s.anchor, s.periods),
        (at(2028, 1, 1), at(2028, 1, 15), at(2028, 1, 15), 0)
    );
    assert!(s.in_trial());
    s.check(MONTHLY).unwrap();
}

#[test]
fn jan_31_renews_on_feb_29_then_mar_31_then_apr_30() {
    let a = at(2028, 1, 31);
    let ends: Vec<_> = (0..5).map(|n| boundary(a, MONTHLY, n)).collect();
    assert_eq!(ends, [a, at(2028, 2, 29), at(2028, 3, 31), at(2028, 4, 30), at(2028, 5, 31)]);
    assert_eq!(boundary(at(2027, 1, 31), MONTHLY, 1), at(2027, 2, 28));
    // The same through renewals: each period starts where the previous one ended.
    let mut s = start(a, MONTHLY, 0);
    for n in 1..5 {
        assert_eq!((s.period_start, s.period_end), (ends[n - 1], ends[n]));
        s = ok(&s, Event::RenewalSucceeded, s.period_end);
    }
    // Leap day anchors clamp in common years and come back in leap years.
    let leap = at(2028, 2, 29);
    let yearly = BillingPeriod { unit: PeriodUnit::Year, count: 1 };
    assert_eq!(boundary(leap, yearly, 1), at(2029, 2, 28));
    assert_eq!(boundary(leap, yearly, 4), at(2032, 2, 29));
    let weekly = BillingPeriod { unit: PeriodUnit::Week, count: 2 };
    assert_eq!(boundary(a, weekly, 1), at(2028, 2, 14));
    let daily = BillingPeriod { unit: PeriodUnit::Day, count: 3 };
    assert_eq!(boundary(a, daily, 2), at(2028, 2, 6));
}

#[test]
fn a_trial_converts_at_its_end_or_lapses() {
    let s = start(at(2028, 1, 1), MONTHLY, 30);
    let end = at(2028, 1, 31);
    assert_eq!(refused(&s, Event::TrialConverted, end - days(1)), "trial_not_ended");
    let a = ok(&s, Event::TrialConverted, end);
    assert_eq!(a.status, Active);
    assert_eq!((a.period_start, a.period_end, a.periods), (end, at(2028, 2, 29), 1));
    assert_eq!(a.trial_end, Some(end));
    assert!(!a.in_trial());
    assert_eq!(refused(&a, Event::TrialConverted, end), "not_trialing");

    let x = ok(&s, Event::TrialLapsed, end + days(1));
    assert_eq!((x.status, x.ends_at), (Expired, Some(end + days(1))));
}

#[test]
fn a_failed_renewal_is_past_due_until_recovered_or_dunning_ends() {
    let s = start(at(2028, 1, 31), MONTHLY, 0);
    let due = s.period_end;
    let p = ok(&s, Event::RenewalFailed, due);
    assert_eq!((p.status, p.period_start, p.period_end), (PastDue, s.period_start, due));
    let p = ok(&p, Event::RenewalFailed, due + days(3));
    assert_eq!(p.status, PastDue);
    // Recovered late: the next period still starts at the old end, no gap.
    let r = ok(&p, Event::RenewalSucceeded, due + days(5));
    assert_eq!((r.status, r.period_start, r.period_end), (Active, due, at(2028, 3, 31)));

    let x = ok(&p, Event::DunningExhausted(EndAction::Expire), due + days(7));
    assert_eq!((x.status, x.ends_at), (Expired, Some(due + days(7))));
    let c = ok(&p, Event::DunningExhausted(EndAction::Cancel), due + days(7));
    assert_eq!((c.status, c.ends_at, c.canceled_immediately), (Canceled, Some(due + days(7)), true));
    assert_eq!(refused(&c, Event::Reactivate, due + days(7)), "canceled_immediately");
    assert_eq!(refused(&s, Event::DunningExhausted(EndAction::Expire), due), "not_past_due");
}

#[test]
fn resuming_adds_the_paused_time_and_re_anchors() {
    let s = start(at(2028, 1, 31), MONTHLY, 0);
    let p = ok(&s, Event::Pause, at(2028, 2, 10));
    assert_eq!((p.status, p.paused_at, p.period_end), (Paused, Some(at(2028, 2, 10)), at(2028, 2, 29)));
    assert_eq!(refused(&p, Event::Pause, at(2028, 2, 11)), "not_pausable");
    assert_eq!(refused(&p, Event::RenewalSucceeded, at(2028, 2, 11)), "not_renewable");
    let r = ok(&p, Event::Resume, at(2028, 2, 20));
    assert_eq!((r.status, r.paused_at), (Active, None));
    assert_eq!((r.period_end, r.anchor, r.periods), (at(2028, 3, 10), at(2028, 3, 10), 0));
    // Renewals follow the new anchor.
    let n = ok(&r, Event::RenewalSucceeded, r.period_end);
    assert_eq!((n.period_start, n.period_end), (at(2028, 3, 10), at(2028, 4, 10)));
    assert_eq!(refused(&r, Event::Resume, at(2028, 2, 21)), "not_paused");
}

#[test]
fn a_paused_trial_resumes_as_a_trial_with_its_end_moved() {
    let s = start(at(2028, 1, 1), MONTHLY, 14);
    let p = ok(&s, Event::Pause, at(2028, 1, 5));
    let r = ok(&p, Event::Resume, at(2028, 1, 8));
    assert_eq!((r.status, r.trial_end, r.period_end), (Trialing, Some(at(2028, 1, 18)), at(2028, 1, 18)));
    let a = ok(&r, Event::TrialConverted, at(2028, 1, 18));
    assert_eq!((a.period_start, a.period_end), (at(2028, 1, 18), at(2028, 2, 18)));
    // A trial that is over converts or lapses; it is not paused.
    assert_eq!(refused(&s, Event::Pause, at(2028, 1, 15)), "trial_ended");
}

#[test]
fn cancel_at_period_end_can_be_reactivated_until_it_ends() {
    let s = start(at(2028, 1, 31), MONTHLY, 0);
    let c = ok(&s, Event::Cancel(CancelMethod::EndOfPeriod), at(2028, 2, 10));
    assert_eq!((c.status, c.ends_at, c.canceled_immediately), (Canceled, Some(at(2028, 2, 29)), false));
    assert_eq!(refused(&c, Event::Cancel(CancelMethod::Immediate), at(2028, 2, 11)), "already_canceled");
    assert_eq!(refused(&c, Event::PeriodEnded, at(2028, 2, 28)), "period_not_ended");
    let r = ok(&c, Event::Reactivate, at(2028, 2, 28));
    assert_eq!((r.status, r.ends_at), (Active, None));
    assert_eq!((r.period_start, r.period_end), (s.period_start, s.period_end));
    assert_eq!(refused(&c, Event::Reactivate, at(2028, 2, 29)), "period_ended");
    assert!(c.is_live(at(2028, 2, 28)) && !c.is_live(at(2028, 2, 29)));
    let x = ok(&c, Event::PeriodEnded, at(2028, 2, 29));
    assert_eq!((x.status, x.ends_at), (Expired, Some(at(2028, 2, 29))));
    assert!(!x.is_live(at(2028, 2, 29)));
    assert_eq!(refused(&s, Event::Reactivate, at(2028, 2, 1)), "not_canceled");
    assert_eq!(refused(&s, Event::PeriodEnded, at(2028, 2, 1)), "not_canceled");
}

#[test]
fn immediate_cancel_ends_now_and_cannot_be_reactivated() {
    let s = start(at(2028, 1, 31), MONTHLY, 0);
    let c = ok(&s, Event::Cancel(CancelMethod::Immediate), at(2028, 2, 10));
    assert_eq!((c.ends_at, c.canceled_immediately), (Some(at(2028, 2, 10)), true));
    assert_eq!(refused(&c, Event::Reactivate, at(2028, 2, 10)), "canceled_immediately");
    assert_eq!(ok(&c, Event::PeriodEnded, at(2028, 2, 10)).status, Expired);
}

#[test]
fn cancels_of_trials_past_due_and_paused_subscriptions() {
    // A trial canceled at period end runs to its trial end, and reactivates as a trial.
    let t = start(at(2028, 1, 1), MONTHLY, 14);
    let c = ok(&t, Event::Cancel(CancelMethod::EndOfPeriod), at(2028, 1, 3));
    assert_eq!(c.ends_at, t.trial_end);
    assert_eq!(ok(&c, Event::Reactivate, at(2028, 1, 4)).status, Trialing);
    // A past-due period is over: cancelling at its end ends now.
    let s = start(at(2028, 1, 1), MONTHLY, 0);
    let p = ok(&s, Event::RenewalFailed, at(2028, 2, 1));
    let c = ok(&p, Event::Cancel(CancelMethod::EndOfPeriod), at(2028, 2, 3));
    assert_eq!(c.ends_at, Some(at(2028, 2, 3)));
    // A paused subscription keeps the time it had left when paused (10 days here).
    let p = ok(&s, Event::Pause, at(2028, 1, 22));
    let c = ok(&p, Event::Cancel(CancelMethod::EndOfPeriod), at(2028, 3, 1));
    assert_eq!((c.ends_at, c.paused_at), (Some(at(2028, 3, 11)), None));
    let c = ok(&p, Event::Cancel(CancelMethod::Immediate), at(2028, 3, 1));
    assert_eq!((c.ends_at, c.paused_at), (Some(at(2028, 3, 1)), None));
}

#[test]
fn defer_and_extend_move_the_next_renewal() {
    let s = start(at(2028, 1, 31), MONTHLY, 0);
    let d = ok(&s, Event::Defer(days(3)), at(2028, 2, 1));
    assert_eq!((d.status, d.period_end, d.anchor, d.periods), (Active, at(2028, 3, 3), at(2028, 3, 3), 0));
    assert_eq!(ok(&d, Event::RenewalSucceeded, d.period_end).period_end, at(2028, 4, 3));
    for bad in [days(0), days(-1), days(366), Duration::hours(23)] {
        assert_eq!(refused(&s, Event::Defer(bad), at(2028, 2, 1)), "duration_out_of_range");
        assert_eq!(refused(&s, Event::Extend(bad), at(2028, 2, 1)), "duration_out_of_range");
    }
    assert!(apply(&s, &Event::Defer(days(365)), at(2028, 2, 1), MONTHLY).is_ok());
    // A trial's end moves with it.
    let t = start(at(2028, 1, 1), MONTHLY, 14);
    let t = ok(&t, Event::Defer(days(7)), at(2028, 1, 2));
    assert_eq!((t.trial_end, t.period_end), (Some(at(2028, 1, 22)), at(2028, 1, 22)));
    // Canceled: only an extension, and it moves ends_at too.
    let c = ok(&s, Event::Cancel(CancelMethod::EndOfPeriod), at(2028, 2, 1));
    assert_eq!(refused(&c, Event::Defer(days(5)), at(2028, 2, 1)), "not_deferrable");
    let e = ok(&c, Event::Extend(days(5)), at(2028, 2, 1));
    assert_eq!((e.status, e.ends_at, e.period_end), (Canceled, Some(at(2028, 3, 5)), at(2028, 3, 5)));
    assert_eq!(refused(&c, Event::Extend(days(5)), at(2028, 2, 29)), "period_ended");
    // Past due: the renewal is invoiced for the period from the period end; it stays put.
    let due = ok(&s, Event::RenewalFailed, s.period_end);
    assert_eq!(refused(&due, Event::Defer(days(5)), at(2028, 3, 2)), "renewal_unpaid");
    assert_eq!(refused(&due, Event::Extend(days(5)), at(2028, 3, 2)), "renewal_unpaid");
    let p = ok(&s, Event::Pause, at(2028, 2, 1));
    assert_eq!(refused(&p, Event::Defer(days(5)), at(2028, 2, 1)), "not_deferrable");
    assert_eq!(refused(&p, Event::Extend(days(5)), at(2028, 2, 1)), "not_extendable");
}

#[test]
fn expired_is_terminal() {
    let s = start(at(2028, 1, 1), MONTHLY, 7);
    let x = ok(&s, Event::TrialLapsed, at(2028, 1, 8));
    for e in all_events() {
        assert_eq!(refused(&x, e, at(2028, 1, 9)), "expired");
    }
}

#[test]
fn access_follows_state_and_grace_policy() {
    let grace = DunningPolicy { grace_days: 7, ..DunningPolicy::default() };
    let none = DunningPolicy { access_during_grace: false, ..grace.clone() };
    let s = start(at(2028, 1, 1), MONTHLY, 0);
    assert_eq!(access(&s, at(2028, 1, 5), &grace), Access::Full);
    assert_eq!(access_until(&s, at(2028, 1, 5), &grace), Some(at(2028, 2, 1)));
    let p = ok(&s, Event::RenewalFailed, at(2028, 2, 1));
    assert_eq!(access(&p, at(2028, 2, 7), &grace), Access::Full);
    assert_eq!(access_until(&p, at(2028, 2, 7), &grace), Some(at(2028, 2, 8)));
    assert_eq!(access(&p, at(2028, 2, 8), &grace), Access::None);
    assert_eq!(access_until(&p, at(2028, 2, 8), &grace), None);
    assert_eq!(access(&p, at(2028, 2, 2), &none), Access::None);
    let z = ok(&s, Event::Pause, at(2028, 1, 5));
    assert_eq!(
        (access(&z, at(2028, 1, 6), &grace), access_until(&z, at(2028, 1, 6), &grace)),
        (Access::None, None)
    );
    let c = ok(&s, Event::Cancel(CancelMethod::EndOfPeriod), at(2028, 1, 5));
    assert_eq!(access(&c, at(2028, 1, 31), &grace), Access::Full);
    assert_eq!(access_until(&c, at(2028, 1, 31), &grace), Some(at(2028, 2, 1)));
    assert_eq!(access(&c, at(2028, 2, 1), &grace), Access::None);
    let x = ok(&c, Event::PeriodEnded, at(2028, 2, 1));
    assert_eq!(access(&x, at(2028, 2, 1), &grace), Access::None);
    let t = start(at(2028, 1, 1), MONTHLY, 14);
    assert_eq!(access_until(&t, at(2028, 1, 2), &grace), Some(at(2028, 1, 15)));
}

#[test]
fn trial_eligibility_gives_every_reason() {
    let now = at(2028, 6, 1);
    let fresh = FamilyHistory::default();
    assert_eq!(
        trial_eligibility(&fresh, now, 90),
        TrialDecision { eligible: true, reasons: vec!["eligible"] }
    );
    let used =
        FamilyHistory { had_trial: true, has_live_subscription: true, last_ended_at: Some(at(2028, 5, 1)) };
    assert_eq!(
        trial_eligibility(&used, now, 90),
        TrialDecision {
            eligible: false,
            reasons: vec!["trial_already_used", "subscription_active", "cooldown_active"]
        }
    );
    // The cooldown runs from the end for exactly `cooldown_days`.
    let ended = FamilyHistory { last_ended_at: Some(at(2028, 3, 10)), ..fresh };
    assert_eq!(trial_eligibility(&ended, now, 90).reasons, ["cooldown_active"]);
    assert_eq!(
        trial_eligibility(&ended, at(2028, 6, 8) - Duration::seconds(1), 90).reasons,
        ["cooldown_active"]
    );
    assert!(trial_eligibility(&ended, at(2028, 6, 8), 90).eligible);
    assert!(trial_eligibility(&ended, now, 0).eligible);
}

#[test]
fn wire_names_round_trip() {
    for s in SubscriptionStatus::ALL {
        assert_eq!(s.as_str().parse::<SubscriptionStatus>(), Ok(*s));
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
    }
    assert_eq!("past_due".parse(), Ok(PastDue));
    assert_eq!("end_of_period".parse(), Ok(CancelMethod::EndOfPeriod));
    assert_eq!(Access::Limited.to_string(), "limited");
    assert!("pastdue".parse::<SubscriptionStatus>().is_err());
    assert_eq!(Event::Cancel(CancelMethod::Immediate).to_string(), "cancel(immediate)");
}

// ---- Properties ------------------------------------------------------------------------------

fn all_events() -> Vec<Event> {
    vec![
        Event::TrialConverted,
        Event::TrialLapsed,
        Event::RenewalSucceeded,
        Event::RenewalFailed,
        Event::DunningExhausted(EndAction::Expire),
        Event::DunningExhausted(EndAction::Cancel),
        Event::Pause,
        Event::Resume,
        Event::Cancel(CancelMethod::EndOfPeriod),
        Event::Cancel(CancelMethod::Immediate),
        Event::Reactivate,
        Event::PeriodEnded,
        Event::Defer(days(1)),
        Event::Extend(days(30)),
    ]
}

/// The transition table written out independently of `apply`: `Ok` when legal, else the reason.
fn expected(s: &State, e: &Event, now: DateTime<Utc>) -> Result<(), &'static str> {
    let ended = |t: Option<DateTime<Utc>>| t.is_none_or(|t| now >= t);
    let in_range = |d: &Duration| *d >= days(1) && *d <= days(365);
    let check = |ok: bool, reason| if ok { Ok(()) } else { Err(reason) };
    match (s.status, e) {
        (Expired, _) => Err("expired"),
        (Trialing, Event::TrialConverted | Event::TrialLapsed) => {
            check(ended(s.trial_end), "trial_not_ended")
        }
        (_, Event::TrialConverted | Event::TrialLapsed) => Err("not_trialing"),
        (Active | PastDue, Event::RenewalSucceeded | Event::RenewalFailed) => Ok(()),
        (_, Event::RenewalSucceeded | Event::RenewalFailed) => Err("not_renewable"),
        (PastDue, Event::DunningExhausted(_)) => Ok(()),
        (_, Event::DunningExhausted(_)) => Err("not_past_due"),
        (Active, Event::Pause) => Ok(()),
        (Trialing, Event::Pause) => check(!ended(s.trial_end), "trial_ended"),
        (_, Event::Pause) => Err("not_pausable"),
        (Paused, Event::Resume) => Ok(()),
        (_, Event::Resume) => Err("not_paused"),
        (Canceled, Event::Cancel(_)) => Err("already_canceled"),
        (_, Event::Cancel(_)) => Ok(()),
        (Canceled, Event::Reactivate) if s.canceled_immediately => Err("canceled_immediately"),
        (Canceled, Event::Reactivate) => check(!ended(s.ends_at), "period_ended"),
        (_, Event::Reactivate) => Err("not_canceled"),
        (Canceled, Event::PeriodEnded) => check(ended(s.ends_at), "period_not_ended"),
        (_, Event::PeriodEnded) => Err("not_canceled"),
        (_, Event::Defer(d) | Event::Extend(d)) if !in_range(d) => Err("duration_out_of_range"),
        (Active | Trialing, Event::Defer(_) | Event::Extend(_)) => Ok(()),
        (PastDue, Event::Defer(_) | Event::Extend(_)) => Err("renewal_unpaid"),
        (Canceled, Event::Extend(_)) => check(!ended(s.ends_at), "period_ended"),
        (_, Event::Extend(_)) => Err("not_extendable"),
        (_, Event::Defer(_)) => Err("not_deferrable"),
    }
}

fn unit() -> impl Strategy<Value = PeriodUnit> {
    prop::sample::select(PeriodUnit::ALL.to_vec())
}

/// Any valid billing period (the catalog's limits: up to three years).
fn billing_period() -> impl Strategy<Value = BillingPeriod> {
    unit().prop_flat_map(|unit| {
        let max = match unit {
            PeriodUnit::Day => 1096u32,
            PeriodUnit::Week => 156,
            PeriodUnit::Month => 36,
            PeriodUnit::Year => 3,
        };
        (Just(unit), 1u32..=max).prop_map(|(unit, count)| BillingPeriod { unit, count })
    })
}

/// An instant in 2000–2099, often on a month end (days 28–31 are drawn as often as the rest).
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    (2000i32..2100, 1u32..=12, prop_oneof![1u32..=27, 28u32..=31], 0u32..86_400).prop_map(|(y, m, d, s)| {
        let d = d.min(days_in_month(y, m));
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(s / 3600, s / 60 % 60, s % 60)
            .unwrap()
            .and_utc()
    })
}

fn shift_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        prop::sample::select(vec![-1i64, 0, 1, 7, 30, 365, 366]).prop_map(days),
        (1i64..400 * 86_400).prop_map(Duration::seconds),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::TrialConverted),
        Just(Event::TrialLapsed),
        Just(Event::RenewalSucceeded),
        Just(Event::RenewalFailed),
        prop::sample::select(EndAction::ALL.to_vec()).prop_map(Event::DunningExhausted),
        Just(Event::Pause),
        Just(Event::Resume),
        prop::sample::select(CancelMethod::ALL.to_vec()).prop_map(Event::Cancel),
        Just(Event::Reactivate),
        Just(Event::PeriodEnded),
        shift_duration().prop_map(Event::Defer),
        shift_duration().prop_map(Event::Extend),
    ]
}

/// How the clock moves before an event: by some time, or exactly to a date the state names.
#[derive(Debug, Clone)]
enum Tick {
    By(i64),
    ToPeriodEnd,
    ToEndsAt,
    ToTrialEnd,
}

fn tick() -> impl Strategy<Value = Tick> {
    prop_oneof![
        2 => (0i64..90 * 86_400).prop_map(Tick::By),
        2 => (0i64..2 * 86_400).prop_map(Tick::By),
        1 => Just(Tick::By(0)),
        1 => Just(Tick::ToPeriodEnd),
        1 => Just(Tick::ToEndsAt),
        1 => Just(Tick::ToTrialEnd),
    ]
}

fn policy() -> impl Strategy<Value = DunningPolicy> {
    (0u32..=60, any::<bool>()).prop_map(|(grace_days, access_during_grace)| DunningPolicy {
        grace_days,
        access_during_grace,
        ..DunningPolicy::default()
    })
}

/// The access rules, restated per status.
fn expected_access(s: &State, now: DateTime<Utc>, d: &DunningPolicy) -> Access {
    let full = |ok: bool| if ok { Access::Full } else { Access::None };
    match s.status {
        Trialing | Active => Access::Full,
        PastDue => full(d.access_during_grace && now < s.period_end + days(i64::from(d.grace_days))),
        Canceled => full(now < s.ends_at.unwrap()),
        Paused | Expired => Access::None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Boundaries are strictly increasing, whole units apart, and months keep the anchor's day
    /// (clamped to the month's length) and time of day.
    #[test]
    fn boundaries_are_calendar_correct(anchor in instant(), period in billing_period(), n in 0u32..200) {
        let (b, next) = (boundary(anchor, period, n), boundary(anchor, period, n + 1));
        prop_assert!(b < next);
        prop_assert_eq!(boundary(anchor, period, 0), anchor);
        let c = i64::from(period.count);
        match period.unit {
            PeriodUnit::Day => prop_assert_eq!(next - b, days(c)),
            PeriodUnit::Week => prop_assert_eq!(next - b, days(7 * c)),
            PeriodUnit::Month | PeriodUnit::Year => {
                let months = c * i64::from(n) * if period.unit == PeriodUnit::Year { 12 } else { 1 };
                let total = i64::from(anchor.year()) * 12 + i64::from(anchor.month0()) + months;
                prop_assert_eq!(i64::from(b.year()) * 12 + i64::from(b.month0()), total);
                prop_assert_eq!(b.day(), anchor.day().min(days_in_month(b.year(), b.month())));
                prop_assert_eq!(b.time(), anchor.time());
            }
        }
    }

    /// Renewing from any start: period k ends exactly where period k + 1 starts, on the
    /// boundaries of the anchor.
    #[test]
    fn renewed_periods_neither_overlap_nor_leave_gaps(
        now in instant(), period in billing_period(), trial_days in 0u32..40, renewals in 1usize..40,
    ) {
        let mut s = start(now, period, trial_days);
        prop_assert_eq!(s.period_start, now);
        if trial_days > 0 {
            s = apply(&s, &Event::TrialConverted, s.period_end, period).unwrap();
        }
        let anchor = s.anchor;
        prop_assert_eq!(s.period_start, anchor);
        for k in 1..=renewals as u32 {
            prop_assert_eq!(s.period_end, boundary(anchor, period, k));
            let next = apply(&s, &Event::RenewalSucceeded, s.period_end, period).unwrap();
            prop_assert_eq!(next.period_start, s.period_end);
            prop_assert!(next.period_start < next.period_end);
            s = next;
        }
    }

    /// Random event streams at a clock that only moves forward: every refusal is exactly the
    /// table's, leaves the state as it was, and every state reached keeps the invariants; periods
    /// only move forward and join up; access follows the rules.
    #[test]
    fn random_streams_keep_every_invariant(
        t0 in instant(),
        period in billing_period(),
        trial_days in prop_oneof![Just(0u32), 1u32..60],
        steps in prop::collection::vec((tick(), event()), 0..50),
        dunning in policy(),
    ) {
        let mut s = start(t0, period, trial_days);
        let mut now = t0;
        prop_assert_eq!(s.check(period), Ok(()));
        for (tick, e) in steps {
            let target = match tick {
                Tick::By(secs) => Some(now + Duration::seconds(secs)),
                Tick::ToPeriodEnd => Some(s.period_end),
                Tick::ToEndsAt => s.ends_at,
                Tick::ToTrialEnd => s.trial_end,
            };
            now = now.max(target.unwrap_or(now));
            let before = s.clone();
            let got = apply(&s, &e, now, period);
            prop_assert_eq!(&s, &before);
            match (got, expected(&s, &e, now)) {
                (Err(err), Err(reason)) => {
                    prop_assert_eq!(err, IllegalTransition { from: s.status, event: e.clone(), reason });
                    continue;
                }
                (Ok(t), Ok(())) => {
                    prop_assert_eq!(t.check(period), Ok(()), "{} at {} from {:?} gave {:?}", e, now, s, t);
                    check_step(&s, &e, &t, now)?;
                    s = t;
                }
                (got, want) => prop_assert!(false, "{e} at {now} from {s:?}: got {got:?}, want {want:?}"),
            }
            prop_assert_eq!(access(&s, now, &dunning), expected_access(&s, now, &dunning));
            prop_assert_eq!(access(&s, now, &dunning) == Access::None, access_until(&s, now, &dunning).is_none());
            let live = !(s.status == Expired || s.status == Canceled && now >= s.ends_at.unwrap());
            prop_assert_eq!(s.is_live(now), live);
            if matches!(s.status, PastDue | Canceled) {
                prop_assert!(access_until(&s, now, &dunning).is_none_or(|u| u > now));
            }
        }
    }
}

/// What each accepted event must have done.
fn check_step(s: &State, e: &Event, t: &State, now: DateTime<Utc>) -> Result<(), TestCaseError> {
    prop_assert!(t.period_end >= s.period_end, "period end moved back");
    if t.period_start != s.period_start {
        prop_assert_eq!(t.period_start, s.period_end, "a new period starts where the last ended");
    }
    match e {
        Event::TrialConverted | Event::RenewalSucceeded => {
            prop_assert_eq!(t.status, Active);
            prop_assert_eq!(t.period_start, s.period_end);
            prop_assert_eq!(t.periods, s.periods + 1);
        }
        Event::TrialLapsed => prop_assert_eq!(t.status, Expired),
        Event::RenewalFailed => {
            prop_assert_eq!(t.status, PastDue);
            prop_assert_eq!((t.period_start, t.period_end), (s.period_start, s.period_end));
        }
        Event::DunningExhausted(a) => {
            prop_assert_eq!(t.status, if *a == EndAction::Expire { Expired } else { Canceled });
            prop_assert_eq!(t.ends_at, Some(now));
        }
        Event::Pause => {
            prop_assert_eq!((t.status, t.paused_at), (Paused, Some(now)));
            prop_assert_eq!(t.period_end, s.period_end);
        }
        Event::Resume => {
            prop_assert_eq!(t.period_end, s.period_end + (now - s.paused_at.unwrap()));
            prop_assert_eq!(t.status, if s.in_trial() { Trialing } else { Active });
        }
        Event::Cancel(CancelMethod::Immediate) => prop_assert_eq!(t.ends_at, Some(now)),
        Event::Cancel(CancelMethod::EndOfPeriod) => {
            prop_assert_eq!(t.ends_at, Some(t.period_end.max(now)));
            prop_assert!(!t.canceled_immediately);
        }
        Event::Reactivate => {
            prop_assert_eq!(t.ends_at, None);
            prop_assert!(matches!(t.status, Active | Trialing));
            prop_assert_eq!(t.period_end, s.period_end);
        }
        Event::PeriodEnded => prop_assert_eq!((t.status, t.ends_at), (Expired, s.ends_at)),
        Event::Defer(d) | Event::Extend(d) => {
            prop_assert_eq!(t.status, s.status);
            prop_assert_eq!(t.period_end, s.period_end + *d);
            prop_assert_eq!(t.ends_at, s.ends_at.map(|x| x + *d));
        }
    }
    Ok(())
}

use chrono::{Duration, NaiveDate};
use proptest::prelude::*;

use super::*;
use crate::catalog::{BillingPeriod, PeriodUnit, MAX_AMOUNT};
use crate::subscription::boundary;

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc()
}

const MONTHLY: BillingPeriod = BillingPeriod { unit: PeriodUnit::Month, count: 1 };

// ---- Examples ---------------------------------------------------------------------------------

#[test]
fn halves_round_up() {
    assert_eq!(prorate(999, 1, 2), 500); // 499.5
    assert_eq!(prorate(1, 1, 2), 1); // 0.5
    assert_eq!(prorate(3, 1, 3), 1);
    assert_eq!(prorate(2, 1, 3), 1); // 0.67
    assert_eq!(prorate(1, 1, 3), 0); // 0.33
    assert_eq!(prorate(999, 0, 30), 0);
    assert_eq!(prorate(999, 30, 30), 999);
}

#[test]
fn out_of_range_parts_are_clamped_and_empty_periods_prorate_to_nothing() {
    assert_eq!(prorate(999, -5, 30), 0);
    assert_eq!(prorate(999, 45, 30), 999);
    assert_eq!(prorate(999, 10, 0), 0);
    assert_eq!(prorate(0, 10, 30), 0);
    assert_eq!(prorate(MAX_AMOUNT, i64::MAX, i64::MAX), MAX_AMOUNT);
}

#[test]
fn an_upgrade_halfway_through_a_thirty_day_month_is_due_half_the_difference() {
    let (start, end) = (at(2028, 4, 1), at(2028, 5, 1));
    let q = quote(ReplacePolicy::ImmediateProrated, 999, 1999, start, end, at(2028, 4, 16));
    assert_eq!(q.kind, ChangeKind::Upgrade);
    assert_eq!((q.credit, q.charge, q.amount_due, q.credit_unused), (500, 1000, 500, 0));
    assert_eq!((q.effective_at, q.period_end), (at(2028, 4, 16), end));
    assert_eq!((q.unused_seconds, q.period_seconds), (15 * 86_400, 30 * 86_400));
}

#[test]
fn a_downgrade_never_charges_and_reports_the_credit_it_does_not_carry() {
    let (start, end) = (at(2028, 4, 1), at(2028, 5, 1));
    let q = quote(ReplacePolicy::ImmediateProrated, 1999, 999, start, end, at(2028, 4, 16));
    assert_eq!(q.kind, ChangeKind::Downgrade);
    assert_eq!((q.credit, q.charge, q.amount_due, q.credit_unused), (1000, 500, 0, 500));
}

#[test]
fn a_switch_at_the_same_price_costs_nothing() {
    let q = quote(ReplacePolicy::ImmediateProrated, 999, 999, at(2028, 4, 1), at(2028, 5, 1), at(2028, 4, 9));
    assert_eq!(q.kind, ChangeKind::Switch);
    assert_eq!((q.amount_due, q.credit_unused), (0, 0));
    assert_eq!(q.credit, q.charge);
}

#[test]
fn at_period_end_charges_nothing_now_and_takes_effect_at_the_end() {
    let end = at(2028, 5, 1);
    let q = quote(ReplacePolicy::AtPeriodEnd, 999, 1999, at(2028, 4, 1), end, at(2028, 4, 16));
    assert_eq!((q.credit, q.charge, q.amount_due, q.credit_unused), (0, 0, 0, 0));
    assert_eq!((q.effective_at, q.period_end), (end, end));
}

#[test]
fn past_the_period_end_nothing_is_left_to_prorate() {
    let end = at(2028, 5, 1);
    let q = quote(ReplacePolicy::ImmediateProrated, 999, 1999, at(2028, 4, 1), end, at(2028, 5, 3));
    assert_eq!((q.credit, q.charge, q.amount_due), (0, 0, 0));
    assert_eq!(q.period_end, end, "the anchor does not move");
}

#[test]
fn a_short_month_prorates_over_its_own_length() {
    // Jan 31 anchor: the second period is Feb 29 – Mar 31 (31 days), prorated over 31 days.
    let a = at(2028, 1, 31);
    let (start, end) = (boundary(a, MONTHLY, 1), boundary(a, MONTHLY, 2));
    assert_eq!((start, end), (at(2028, 2, 29), at(2028, 3, 31)));
    let q = quote(ReplacePolicy::ImmediateProrated, 0, 3100, start, end, at(2028, 3, 30));
    assert_eq!(q.charge, 100);
}

// ---- Properties -------------------------------------------------------------------------------

/// Cut points of a period of `whole` seconds into pieces: sorted, inside the period.
fn pieces(whole: i64, cuts: &[i64]) -> Vec<i64> {
    let mut points: Vec<i64> = cuts.iter().map(|c| c.rem_euclid(whole + 1)).collect();
    points.push(0);
    points.push(whole);
    points.sort_unstable();
    points.windows(2).map(|w| w[1] - w[0]).collect()
}

fn moment() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000).prop_map(|s| DateTime::<Utc>::from_timestamp(s, 0).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The parts of any split of a period add up to the full price within one minor unit per
    /// split point; each part is between 0 and the price.
    #[test]
    fn parts_of_any_split_add_up_to_the_price(
        amount in 0..=MAX_AMOUNT,
        whole in 1i64..=400 * 86_400,
        cuts in proptest::collection::vec(any::<i64>(), 0..12),
    ) {
        let parts = pieces(whole, &cuts);
        let prorated: Vec<i64> = parts.iter().map(|p| prorate(amount, *p, whole)).collect();
        for p in &prorated {
            prop_assert!((0..=amount).contains(p), "part {p} of {amount}");
        }
        let sum: i64 = prorated.iter().sum();
        let splits = (parts.len() - 1) as i64;
        prop_assert!((sum - amount).abs() <= splits, "sum {sum} of {amount} over {splits} splits: {prorated:?}");
    }

    /// A prorated part is the exact share rounded half up: within half a unit of it, and
    /// growing with the time and with the amount.
    #[test]
    fn a_part_is_the_exact_share_rounded_half_up(
        amount in 0..=MAX_AMOUNT,
        whole in 1i64..=400 * 86_400,
        part in 0i64..=400 * 86_400,
        more in 0i64..=1_000_000,
    ) {
        let part = part.min(whole);
        let got = prorate(amount, part, whole);
        let exact2 = 2 * i128::from(amount) * i128::from(part); // twice the exact share × whole
        let twice_error = 2 * i128::from(got) * i128::from(whole) - exact2;
        prop_assert!(-i128::from(whole) < twice_error && twice_error <= i128::from(whole));
        prop_assert!(prorate(amount, (part + 1).min(whole), whole) >= got);
        prop_assert!(prorate((amount + more).min(MAX_AMOUNT), part, whole) >= got);
    }

    /// Any plan change: amounts never negative and never above the prices; a downgrade or a
    /// same-price switch never charges; an upgrade is due exactly charge − credit; the period
    /// end never moves.
    #[test]
    fn a_quote_never_overcharges(
        old in 0..=MAX_AMOUNT,
        new in 0..=MAX_AMOUNT,
        start in moment(),
        length in 1i64..=400 * 86_400,
        offset in -86_400i64..=401 * 86_400,
        at_end in any::<bool>(),
    ) {
        let end = start + Duration::seconds(length);
        let now = start + Duration::seconds(offset);
        let policy = if at_end { ReplacePolicy::AtPeriodEnd } else { ReplacePolicy::ImmediateProrated };
        let q = quote(policy, old, new, start, end, now);
        prop_assert!((0..=old).contains(&q.credit));
        prop_assert!((0..=new).contains(&q.charge));
        prop_assert!((0..=new).contains(&q.amount_due));
        prop_assert!(q.credit_unused >= 0 && q.credit_unused <= q.credit);
        prop_assert_eq!(q.period_end, end);
        prop_assert_eq!(q.kind == ChangeKind::Upgrade, new > old);
        match (policy, q.kind) {
            (ReplacePolicy::AtPeriodEnd, _) => {
                prop_assert_eq!((q.credit, q.charge, q.amount_due), (0, 0, 0));
                prop_assert_eq!(q.effective_at, end.max(now));
            }
            (_, ChangeKind::Upgrade) => {
                prop_assert_eq!(q.amount_due, q.charge - q.credit);
                prop_assert_eq!(q.effective_at, now);
            }
            _ => {
                prop_assert_eq!(q.amount_due, 0);
                prop_assert_eq!(q.credit_unused, q.credit - q.charge);
            }
        }
    }

    /// Two upgrades in a period (A → B at t1, B → C at t2) never cost more than upgrading
    /// A → C at t1 at once, give or take the rounding of the extra change.
    #[test]
    fn two_upgrades_cost_no_more_than_one(
        a in 0..=100_000i64,
        b in 0..=100_000i64,
        c in 0..=100_000i64,
        t1 in 0i64..=30 * 86_400,
        t2 in 0i64..=30 * 86_400,
    ) {
        let mut p = [a, b, c];
        p.sort_unstable();
        let [a, b, c] = p;
        let (start, end) = (at(2028, 4, 1), at(2028, 5, 1));
        let s = |t| start + Duration::seconds(t);
        let (t1, t2) = (s(t1.min(t2)), s(t1.max(t2)));
        let q1 = quote(ReplacePolicy::ImmediateProrated, a, b, start, end, t1);
        let q2 = quote(ReplacePolicy::ImmediateProrated, b, c, start, end, t2);
        let direct = quote(ReplacePolicy::ImmediateProrated, a, c, start, end, t1);
        prop_assert!(q1.amount_due + q2.amount_due <= direct.amount_due + 2);
    }
}

#[test]
fn only_an_active_subscription_inside_its_period_may_change_plans() {
    use crate::subscription::{apply, start, CancelMethod, Event};
    let now = at(2028, 4, 1);
    let s = start(now, MONTHLY, 0);
    assert_eq!(replaceable(&s, at(2028, 4, 20)), Ok(()));
    assert_eq!(replaceable(&s, at(2028, 5, 1)), Err("renewal_due"));
    let trial = start(now, MONTHLY, 14);
    assert_eq!(replaceable(&trial, now), Err("not_replaceable"));
    let canceled = apply(&s, &Event::Cancel(CancelMethod::EndOfPeriod), now, MONTHLY).unwrap();
    assert_eq!(replaceable(&canceled, now), Err("not_replaceable"));
    let paused = apply(&s, &Event::Pause, now, MONTHLY).unwrap();
    assert_eq!(replaceable(&paused, now), Err("not_replaceable"));
    let ended = apply(&canceled, &Event::PeriodEnded, at(2028, 5, 2), MONTHLY).unwrap();
    assert_eq!(replaceable(&ended, at(2028, 5, 2)), Err("expired"));
}

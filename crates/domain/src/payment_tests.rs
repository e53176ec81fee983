use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use PaymentStatus::*;

/// The legal moves, written out by hand (not derived from `transition`): (from, to, sources).
/// Same-state duplicates are listed separately in `is_legal`.
fn legal_moves() -> Vec<(PaymentStatus, PaymentStatus, &'static [Source])> {
    const ANY: &[Source] = &[Source::Attempt, Source::Reconciliation, Source::Webhook];
    const ATTEMPT: &[Source] = &[Source::Attempt];
    const EVIDENCE: &[Source] = &[Source::Reconciliation, Source::Webhook];
    vec![
        (Pending, RequiresAction, ANY),
        (Pending, Authorized, ANY),
        (Pending, Captured, ANY),
        (Pending, Failed, ANY),
        (Pending, Canceled, ANY),
        (Pending, Unknown, ATTEMPT),
        (RequiresAction, Authorized, ANY),
        (RequiresAction, Captured, ANY),
        (RequiresAction, Failed, ANY),
        (RequiresAction, Canceled, ANY),
        (RequiresAction, Unknown, ATTEMPT),
        (Authorized, Captured, ANY),
        (Authorized, Canceled, ANY),
        (Authorized, Unknown, ATTEMPT),
        (Unknown, Captured, EVIDENCE),
        (Unknown, Authorized, EVIDENCE),
        (Unknown, Failed, EVIDENCE),
        (Unknown, Canceled, EVIDENCE),
    ]
}

fn is_legal(from: PaymentStatus, e: PaymentEvent) -> bool {
    if from == e.observed {
        // A duplicate is harmless, except that an unknown payment takes nothing from an attempt.
        return !(from == Unknown && e.source == Source::Attempt);
    }
    legal_moves().iter().any(|(f, t, s)| *f == from && *t == e.observed && s.contains(&e.source))
}

fn all_events() -> Vec<PaymentEvent> {
    let mut v = Vec::new();
    for observed in PaymentStatus::ALL {
        for source in Source::ALL {
            v.push(PaymentEvent { observed, source });
        }
    }
    v
}

#[test]
fn every_state_event_pair_succeeds_exactly_when_legal() {
    let mut legal = 0;
    for from in PaymentStatus::ALL {
        for e in all_events() {
            let got = transition(from, e);
            if is_legal(from, e) {
                assert_eq!(got, Ok(e.observed), "{from} + {e:?} must be legal");
                legal += 1;
            } else {
                assert_eq!(got, Err(IllegalTransition { from, event: e }), "{from} + {e:?} must be refused");
            }
        }
    }
    // 18 moves (ANY counts 3) plus 6 * 3 + 2 same-state duplicates.
    assert_eq!(legal, 11 * 3 + 3 + 4 * 2 + 6 * 3 + 2);
}

#[test]
fn unknown_is_never_left_by_an_attempt() {
    for to in PaymentStatus::ALL {
        assert!(transition(Unknown, PaymentEvent::attempt(to)).is_err(), "attempt {to}");
    }
    for to in [Captured, Authorized, Failed, Canceled] {
        assert_eq!(transition(Unknown, PaymentEvent::reconciliation(to)), Ok(to));
        assert_eq!(transition(Unknown, PaymentEvent::webhook(to)), Ok(to));
    }
    // Evidence does not say "pending" or "requires action" about a lost charge.
    for to in [Pending, RequiresAction] {
        assert!(transition(Unknown, PaymentEvent::webhook(to)).is_err());
    }
}

#[test]
fn terminal_states_accept_only_duplicates() {
    for from in PaymentStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        for e in all_events() {
            match transition(from, e) {
                Ok(to) => assert_eq!(to, from, "{from} left by {e:?}"),
                Err(err) => assert_eq!(err.from, from),
            }
        }
    }
    assert_eq!(PaymentStatus::ALL.iter().filter(|s| s.is_terminal()).count(), 3);
}

#[test]
fn every_state_is_reachable_from_pending() {
    let mut seen = BTreeSet::from([Pending]);
    let mut frontier = vec![Pending];
    while let Some(s) = frontier.pop() {
        for e in all_events() {
            if let Ok(t) = transition(s, e) {
                if seen.insert(t) {
                    frontier.push(t);
                }
            }
        }
    }
    assert_eq!(seen, PaymentStatus::ALL.into_iter().collect());
}

#[test]
fn wire_names_round_trip() {
    for s in PaymentStatus::ALL {
        assert_eq!(s.as_str().parse::<PaymentStatus>(), Ok(s));
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
    }
    for s in RefundStatus::ALL {
        assert_eq!(s.as_str().parse::<RefundStatus>(), Ok(s));
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
    }
    assert!("refunded".parse::<PaymentStatus>().is_err());
}

#[test]
fn refund_transitions_are_exactly_pending_to_terminal_and_duplicates() {
    use RefundStatus as R;
    for from in R::ALL {
        for to in R::ALL {
            let legal = from == to || (from == R::Pending && to != R::Pending);
            assert_eq!(refund_transition(from, to).is_ok(), legal, "{from} -> {to}");
        }
    }
    assert_eq!(
        refund_transition(R::Succeeded, R::Failed),
        Err(IllegalRefundTransition { from: R::Succeeded, to: R::Failed })
    );
}

#[test]
fn refunds_never_exceed_the_captured_amount() {
    use RefundStatus as R;
    assert_eq!(check_refund(1000, [], 400), Ok(600));
    assert_eq!(check_refund(1000, [(400, R::Succeeded)], 600), Ok(0));
    assert_eq!(
        check_refund(1000, [(400, R::Succeeded), (500, R::Pending)], 200),
        Err(RefundAmountError::ExceedsCaptured { requested: 200, refundable: 100 })
    );
    // A failed refund frees its amount.
    assert_eq!(check_refund(1000, [(1000, R::Failed)], 1000), Ok(0));
    assert_eq!(
        check_refund(1000, [], 1001),
        Err(RefundAmountError::ExceedsCaptured { requested: 1001, refundable: 1000 })
    );
    assert_eq!(check_refund(1000, [], 0), Err(RefundAmountError::NotPositive));
    assert_eq!(check_refund(1000, [], -5), Err(RefundAmountError::NotPositive));
    assert_eq!(check_refund(-1, [], 1), Err(RefundAmountError::NegativeCaptured));
    assert_eq!(check_refund(1000, [(0, R::Failed)], 1), Err(RefundAmountError::InvalidExisting));
    assert_eq!(check_refund(1000, [(-3, R::Succeeded)], 1), Err(RefundAmountError::InvalidExisting));
    assert_eq!(
        check_refund(i64::MAX, [(i64::MAX, R::Pending), (1, R::Pending)], 1),
        Err(RefundAmountError::Overflow)
    );
    // Records already over the ceiling refuse every further refund.
    assert!(check_refund(100, [(80, R::Succeeded), (80, R::Succeeded)], 1).is_err());
    assert_eq!(refundable(0, []), Ok(0));
    assert!(check_refund(0, [], 1).is_err());
}

#[test]
fn idempotency_keys_are_deterministic_and_distinct() {
    let p = PaymentId::new();
    let q = PaymentId::new();
    let r = RefundId::new();
    assert_eq!(idempotency_key(&p, 1), idempotency_key(&p, 1));
    assert_eq!(idempotency_key(&p, 1), format!("azotte-{p}-1"));
    assert_eq!(refund_idempotency_key(&r, 2), format!("azotte-{r}-2"));
    let keys: BTreeSet<String> = [
        idempotency_key(&p, 1),
        idempotency_key(&p, 2),
        idempotency_key(&q, 1),
        capture_idempotency_key(&p, 1),
        void_idempotency_key(&p, 1),
        refund_idempotency_key(&r, 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys.len(), 6);
    assert!(keys.iter().all(|k| k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())));
    // The key survives a round trip of the id through text (a restart reads it back).
    let again: PaymentId = p.to_string().parse().unwrap();
    assert_eq!(idempotency_key(&again, 7), idempotency_key(&p, 7));
}

fn status() -> impl Strategy<Value = PaymentStatus> {
    prop::sample::select(PaymentStatus::ALL.to_vec())
}

fn event() -> impl Strategy<Value = PaymentEvent> {
    (status(), prop::sample::select(Source::ALL.to_vec()))
        .prop_map(|(observed, source)| PaymentEvent { observed, source })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random event streams from `pending` (refused events are ignored, as callers do): every
    /// step taken is a legal move, terminal states stay put, `unknown` is only left on evidence.
    #[test]
    fn random_streams_reach_only_legal_states(events in prop::collection::vec(event(), 0..40)) {
        let mut s = Pending;
        let mut terminal_at: Option<PaymentStatus> = None;
        for e in events {
            match transition(s, e) {
                Ok(t) => {
                    prop_assert!(is_legal(s, e), "{s} + {e:?} accepted");
                    if s == Unknown && t != Unknown {
                        prop_assert!(e.source.is_evidence());
                    }
                    s = t;
                }
                Err(err) => {
                    prop_assert!(!is_legal(s, e), "{s} + {e:?} refused");
                    prop_assert_eq!(err.from, s);
                }
            }
            if let Some(t) = terminal_at {
                prop_assert_eq!(s, t, "left terminal state");
            } else if s.is_terminal() {
                terminal_at = Some(s);
            }
        }
    }

    /// Random refund requests and PSP answers: the reserved total never exceeds the captured
    /// amount, and whatever was refused would indeed have exceeded it.
    #[test]
    fn random_refunds_never_exceed_captured(
        captured in 0i64..100_000,
        ops in prop::collection::vec((1i64..60_000, 0u8..3, any::<prop::sample::Index>()), 0..30),
    ) {
        let mut refunds: Vec<(i64, RefundStatus)> = Vec::new();
        for (amount, answer, which) in ops {
            let reserved: i64 = refunds.iter().filter(|r| r.1.reserves_amount()).map(|r| r.0).sum();
            match check_refund(captured, refunds.iter().copied(), amount) {
                Ok(left) => {
                    prop_assert!(reserved + amount <= captured);
                    prop_assert_eq!(left, captured - reserved - amount);
                    refunds.push((amount, RefundStatus::Pending));
                }
                Err(RefundAmountError::ExceedsCaptured { refundable, .. }) => {
                    prop_assert!(reserved + amount > captured);
                    prop_assert_eq!(refundable, captured - reserved);
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
            // The PSP answers one refund (maybe a duplicate or an illegal answer, which is ignored).
            if !refunds.is_empty() {
                let i = which.index(refunds.len());
                let to = RefundStatus::ALL[answer as usize];
                if let Ok(t) = refund_transition(refunds[i].1, to) {
                    refunds[i].1 = t;
                }
            }
            let reserved: i64 = refunds.iter().filter(|r| r.1.reserves_amount()).map(|r| r.0).sum();
            prop_assert!(reserved <= captured && reserved >= 0);
            prop_assert!(refundable(captured, refunds.iter().copied()).is_ok());
        }
    }
}

use proptest::prelude::*;

use super::*;

const S: &[InvoiceStatus] = InvoiceStatus::ALL;

#[test]
fn the_transition_table() {
    use InvoiceEvent as E;
    use InvoiceStatus as St;
    // Every (status, event) pair: the table's answer, or refused.
    let expected = |from: St, e: E| -> Option<St> {
        match (from, e) {
            (St::Draft, E::Finalize) => Some(St::Open),
            (St::Draft | St::Open | St::Uncollectible, E::Void) => Some(St::Void),
            (St::Open | St::Uncollectible, E::Pay) => Some(St::Paid),
            (St::Open, E::MarkUncollectible) => Some(St::Uncollectible),
            _ => None,
        }
    };
    for from in S {
        for e in InvoiceEvent::ALL {
            assert_eq!(transition(*from, *e).ok(), expected(*from, *e), "{from} + {e}");
        }
    }
    assert_eq!(
        transition(St::Paid, E::Void),
        Err(InvoiceError::IllegalTransition { from: St::Paid, event: E::Void })
    );
}

#[test]
fn lines_split_per_the_price_s_tax_behaviour() {
    let l = price_line(LineKind::Subscription, 999, 1, TaxKind::Inclusive, 2000).unwrap();
    assert_eq!(l.amounts, Amounts { net: 833, tax: 166, gross: 999 }); // 832.5 → 833
    let l = price_line(LineKind::Subscription, 1000, 3, TaxKind::Exclusive, 1900).unwrap();
    assert_eq!((l.amount, l.amounts), (3000, Amounts { net: 3000, tax: 570, gross: 3570 }));
    // Tax per line, not per unit: 3 × 5 at 10 % exclusive is 15 + 2 (1.5 → 2), not 3 × (5 + 1).
    let l = price_line(LineKind::OneTime, 5, 3, TaxKind::Exclusive, 1000).unwrap();
    assert_eq!(l.amounts, Amounts { net: 15, tax: 2, gross: 17 });
    // A credit mirrors the charge it undoes.
    let c = price_line(LineKind::Proration, -999, 1, TaxKind::Inclusive, 2000).unwrap();
    assert_eq!(c.amounts, Amounts { net: -833, tax: -166, gross: -999 });
}

#[test]
fn bad_lines_are_refused() {
    let p = |k, a, q, r| price_line(k, a, q, TaxKind::Exclusive, r);
    assert_eq!(p(LineKind::Subscription, 100, 0, 0), Err(InvoiceError::ZeroQuantity));
    assert_eq!(p(LineKind::Subscription, 100, 1, 10_001), Err(InvoiceError::RateOutOfRange));
    assert_eq!(p(LineKind::Subscription, -1, 1, 0), Err(InvoiceError::NegativeLine));
    assert_eq!(p(LineKind::OneTime, MAX_AMOUNT, 2, 0), Err(InvoiceError::TooLarge));
    assert!(p(LineKind::Proration, -1, 1, 0).is_ok());
    assert_eq!(totals([]), Err(InvoiceError::NoLines));
    let charge = p(LineKind::Subscription, 500, 1, 0).unwrap().amounts;
    let credit = p(LineKind::Proration, -600, 1, 0).unwrap().amounts;
    assert_eq!(totals([&charge, &credit]), Err(InvoiceError::NegativeTotal));
}

#[test]
fn numbers_and_series() {
    assert_eq!(number(&series("INV-", 2026, DocumentKind::Invoice), 42), "INV-2026-000042");
    assert_eq!(number(&series("INV-", 2026, DocumentKind::CreditNote), 1), "INV-2026-CN-000001");
    assert_eq!(number("X2026", 1_234_567), "X2026-1234567");
}

#[test]
fn a_series_names_its_prefix() {
    for prefix in ["INV-", "X", "X-CN", "SHOP-2026-", "A1"] {
        for kind in [DocumentKind::Invoice, DocumentKind::CreditNote] {
            assert_eq!(prefix_of_series(&series(prefix, 2026, kind)), Some(prefix), "{prefix} {kind:?}");
        }
    }
    assert_eq!(prefix_of_series("2026"), None);
    assert_eq!(prefix_of_series("INV-"), None);
    assert_eq!(prefix_of_series("-CN"), None);
}

#[test]
fn credits_spread_and_end_exactly() {
    let lines = vec![
        (2000, price_line(LineKind::Subscription, 999, 1, TaxKind::Inclusive, 2000).unwrap().amounts),
        (1000, price_line(LineKind::OneTime, 250, 1, TaxKind::Exclusive, 1000).unwrap().amounts),
    ];
    // 999 + 275 = 1274; credit 500 → 392 and 108 by largest remainder.
    let c = allocate_credit(&lines, 500).unwrap();
    assert_eq!(c.iter().map(|a| a.gross).collect::<Vec<_>>(), [392, 108]);
    let left = remaining(&lines, &c);
    let rest = allocate_credit(&left, 774).unwrap();
    assert_eq!(c[0].tax + rest[0].tax, lines[0].1.tax);
    assert_eq!(c[1].net + rest[1].net, lines[1].1.net);
    assert_eq!(allocate_credit(&lines, 1275), Err(InvoiceError::CreditOutOfRange));
    assert_eq!(allocate_credit(&lines, 0), Err(InvoiceError::CreditOutOfRange));
}

fn kind() -> impl Strategy<Value = TaxKind> {
    prop_oneof![Just(TaxKind::Inclusive), Just(TaxKind::Exclusive)]
}

/// Lines of an invoice: charges, and sometimes a proration credit smaller than the first
/// charge at the same rate and behaviour (an upgrade's credit for unused time).
fn invoice_lines() -> impl Strategy<Value = Vec<PricedLine>> {
    (
        prop::collection::vec((1i64..5_000_000, 1u32..5, kind(), 0u32..=2_500), 1..6),
        prop::option::of(0.0f64..1.0),
    )
        .prop_map(|(charges, credit)| {
            let mut lines: Vec<PricedLine> = charges
                .iter()
                .map(|(a, q, k, r)| price_line(LineKind::Subscription, *a, *q, *k, *r).unwrap())
                .collect();
            if let Some(f) = credit {
                let first = lines[0];
                let c = -((first.amount as f64 * f) as i64);
                if c < 0 {
                    lines.push(
                        price_line(LineKind::Proration, c, 1, first.tax_behaviour, first.rate_bp).unwrap(),
                    );
                }
            }
            lines
        })
}

proptest! {
    #[test]
    fn a_line_adds_up(a in 0i64..10_000_000_000, q in 1u32..1000, k in kind(), r in 0u32..=10_000) {
        let l = price_line(LineKind::OneTime, a, q, k, r).unwrap();
        let s = l.amounts;
        prop_assert_eq!(s.net + s.tax, s.gross);
        prop_assert!(s.net >= 0 && s.tax >= 0 && s.gross >= 0);
        prop_assert_eq!(l.amount, a * i64::from(q));
        match k {
            TaxKind::Inclusive => prop_assert_eq!(s.gross, l.amount),
            TaxKind::Exclusive => prop_assert_eq!(s.net, l.amount),
        }
        let m = price_line(LineKind::Proration, -a, q, k, r).unwrap().amounts;
        prop_assert_eq!(m, Amounts { net: -s.net, tax: -s.tax, gross: -s.gross });
    }

    #[test]
    fn totals_are_the_sums_and_never_negative(lines in invoice_lines()) {
        let amounts: Vec<Amounts> = lines.iter().map(|l| l.amounts).collect();
        let t = totals(&amounts).unwrap();
        prop_assert_eq!(t.net, amounts.iter().map(|a| a.net).sum::<i64>());
        prop_assert_eq!(t.tax, amounts.iter().map(|a| a.tax).sum::<i64>());
        prop_assert_eq!(t.gross, amounts.iter().map(|a| a.gross).sum::<i64>());
        prop_assert_eq!(t.net + t.tax, t.gross);
        prop_assert!(t.net >= 0 && t.tax >= 0 && t.gross >= 0);
        let by_rate = tax_summary(lines.iter().map(|l| (l.rate_bp, &l.amounts)));
        prop_assert_eq!(by_rate.values().map(|a| a.tax).sum::<i64>(), t.tax);
    }

    #[test]
    fn credits_never_exceed_a_line_and_end_exactly(
        lines in invoice_lines(),
        cuts in prop::collection::vec(0.0f64..1.0, 0..5),
    ) {
        let original: Vec<(u32, Amounts)> = lines.iter().map(|l| (l.rate_bp, l.amounts)).collect();
        let total = totals(original.iter().map(|(_, a)| a)).unwrap().gross;
        prop_assume!(total > 0);
        let mut credited = vec![Amounts::default(); original.len()];
        let mut left_total = total;
        // Partial credits, then the rest.
        let mut amounts: Vec<i64> = cuts.iter().map(|f| ((total as f64 * f / 4.0) as i64).max(1)).collect();
        amounts.push(i64::MAX);
        for want in amounts {
            if left_total == 0 {
                break;
            }
            let amount = want.min(left_total);
            let left = remaining(&original, &credited);
            let c = allocate_credit(&left, amount).unwrap();
            prop_assert_eq!(c.iter().map(|a| a.gross).sum::<i64>(), amount);
            for (i, (x, (_, rem))) in c.iter().zip(&left).enumerate() {
                prop_assert_eq!(x.net + x.tax, x.gross);
                let within = |v: i64, limit: i64| if limit >= 0 { (0..=limit).contains(&v) } else { (limit..=0).contains(&v) };
                prop_assert!(within(x.gross, rem.gross), "line {} gross {} of {}", i, x.gross, rem.gross);
                prop_assert!(within(x.net, rem.net) && within(x.tax, rem.tax), "line {}: {:?} of {:?}", i, x, rem);
                credited[i] = credited[i].checked_add(*x).unwrap();
            }
            left_total -= amount;
        }
        let orig: Vec<Amounts> = original.iter().map(|(_, a)| *a).collect();
        prop_assert_eq!(credited, orig);
    }
}

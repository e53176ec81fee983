//! Invoices and credit notes: the status transition table, line and totals arithmetic in integer
//! minor units, how a refund is spread over an invoice's lines, the numbering format and the
//! fiscalization vocabulary. Pure rules; no I/O.
//!
//! **Rounding rule.** Tax is computed per line, never on the total: a line's amount (unit amount
//! × quantity, exact) is split with [`tax_split`] at the line's rate, rounding half up to the
//! minor unit (half away from zero for a negative proration line, so a credit mirrors the
//! charge it undoes). For an exclusive price the net is the line amount and the tax
//! `round(amount × rate)` is added. For an inclusive price the gross is the line amount, the
//! net is `round(amount / (1 + rate))` and the tax is the rest, so on an exact half it is the
//! net that rounds up (999 at 20 %: net 833, tax 166). The invoice's net, tax and total are the sums of its lines,
//! so what a line shows always adds up to what the invoice says; an invoice whose net, tax or
//! total would be negative is refused (a credit larger than the charge belongs on a credit note).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{tax_split, wire_enum, TaxKind, MAX_AMOUNT, MAX_RATE_BP};

wire_enum!(
    /// Where an invoice stands: `draft` (no number yet), `open` (numbered, awaiting payment),
    /// `paid`, `void` (cancelled before payment) or `uncollectible` (payment given up, may still
    /// be paid late).
    InvoiceStatus { Draft => "draft", Open => "open", Paid => "paid", Void => "void", Uncollectible => "uncollectible" }
);
wire_enum!(
    /// What can happen to an invoice.
    InvoiceEvent { Finalize => "finalize", Pay => "pay", MarkUncollectible => "mark_uncollectible", Void => "void" }
);
wire_enum!(
    /// What an invoice line bills: a subscription period, a proration (may be negative: credit
    /// for unused time) or a one-time purchase.
    LineKind { Subscription => "subscription", Proration => "proration", OneTime => "one_time" }
);
wire_enum!(
    /// A numbered document: invoices and credit notes have separate gapless series.
    DocumentKind { Invoice => "invoice", CreditNote => "credit_note" }
);
wire_enum!(
    /// Who fiscalizes a storefront's documents: nobody (`none`, the default) or Azotte itself
    /// (`local`: an Ed25519 signature over the document's canonical JSON).
    FiscalProvider { None => "none", Local => "local" }
);
wire_enum!(
    /// What a fiscalization provider is asked to do with a document.
    FiscalAction { Issue => "issue", Cancel => "cancel", CreditNote => "credit_note" }
);
wire_enum!(
    /// Where a fiscalization request stands: `pending` (retried until it succeeds), `done`, or
    /// `failed` once its attempts are exhausted.
    FiscalStatus { Pending => "pending", Done => "done", Failed => "failed" }
);

/// The transition table: (from, event) → to. Anything not listed is refused. `paid` and `void`
/// are final; a paid invoice is corrected by credit notes, never changed.
pub const TRANSITIONS: &[(InvoiceStatus, InvoiceEvent, InvoiceStatus)] = {
    use InvoiceEvent as E;
    use InvoiceStatus as S;
    &[
        (S::Draft, E::Finalize, S::Open),
        (S::Draft, E::Void, S::Void),
        (S::Open, E::Pay, S::Paid),
        (S::Open, E::MarkUncollectible, S::Uncollectible),
        (S::Open, E::Void, S::Void),
        (S::Uncollectible, E::Pay, S::Paid),
        (S::Uncollectible, E::Void, S::Void),
    ]
};

/// Why an invoice rule refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("an invoice that is {from} cannot {event}")]
    IllegalTransition { from: InvoiceStatus, event: InvoiceEvent },
    #[error("an invoice needs at least one line")]
    NoLines,
    #[error("a line's quantity must be at least 1")]
    ZeroQuantity,
    #[error("a tax rate must be 0 to 10000 basis points")]
    RateOutOfRange,
    #[error("only a proration line may be negative")]
    NegativeLine,
    #[error("an amount is too large")]
    TooLarge,
    #[error("the invoice's net, tax or total would be negative")]
    NegativeTotal,
    #[error("the credit must be positive and at most what is left to credit")]
    CreditOutOfRange,
}

/// Where `event` takes an invoice that is `from`.
pub fn transition(from: InvoiceStatus, event: InvoiceEvent) -> Result<InvoiceStatus, InvoiceError> {
    TRANSITIONS
        .iter()
        .find(|(f, e, _)| *f == from && *e == event)
        .map(|(_, _, to)| *to)
        .ok_or(InvoiceError::IllegalTransition { from, event })
}

/// Net, tax and gross of a line or a document, in minor units; `net + tax == gross` always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    pub net: i64,
    pub tax: i64,
    pub gross: i64,
}

impl Amounts {
    fn neg(self) -> Amounts {
        Amounts { net: -self.net, tax: -self.tax, gross: -self.gross }
    }

    fn checked_add(self, o: Amounts) -> Option<Amounts> {
        Some(Amounts {
            net: self.net.checked_add(o.net)?,
            tax: self.tax.checked_add(o.tax)?,
            gross: self.gross.checked_add(o.gross)?,
        })
    }

    fn sub(self, o: Amounts) -> Amounts {
        Amounts { net: self.net - o.net, tax: self.tax - o.tax, gross: self.gross - o.gross }
    }
}

/// One priced line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricedLine {
    /// Unit amount × quantity, as priced (tax included or not, per `tax_behaviour`).
    pub amount: i64,
    pub tax_behaviour: TaxKind,
    pub rate_bp: u32,
    pub amounts: Amounts,
}

/// Splits a signed amount: a negative one is the mirror of the positive one.
fn split(amount: i64, kind: TaxKind, rate_bp: u32) -> Amounts {
    let (net, tax, gross) = tax_split(amount.abs(), kind, rate_bp);
    let a = Amounts { net, tax, gross };
    if amount < 0 {
        a.neg()
    } else {
        a
    }
}

/// Prices a line: `unit_amount × quantity` split at `rate_bp` per the price's tax behaviour.
pub fn price_line(
    kind: LineKind,
    unit_amount: i64,
    quantity: u32,
    tax_behaviour: TaxKind,
    rate_bp: u32,
) -> Result<PricedLine, InvoiceError> {
    if quantity == 0 {
        return Err(InvoiceError::ZeroQuantity);
    }
    if rate_bp > MAX_RATE_BP {
        return Err(InvoiceError::RateOutOfRange);
    }
    if unit_amount < 0 && kind != LineKind::Proration {
        return Err(InvoiceError::NegativeLine);
    }
    let amount = unit_amount
        .checked_mul(i64::from(quantity))
        .filter(|a| a.abs() <= MAX_AMOUNT)
        .ok_or(InvoiceError::TooLarge)?;
    Ok(PricedLine { amount, tax_behaviour, rate_bp, amounts: split(amount, tax_behaviour, rate_bp) })
}

/// An invoice's totals: the sums of its lines. Refused when there is no line, when a sum
/// overflows, or when the net, tax or total would be negative.
pub fn totals<'a>(lines: impl IntoIterator<Item = &'a Amounts>) -> Result<Amounts, InvoiceError> {
    let mut sum = Amounts::default();
    let mut any = false;
    for l in lines {
        any = true;
        sum = sum.checked_add(*l).ok_or(InvoiceError::TooLarge)?;
    }
    if !any {
        return Err(InvoiceError::NoLines);
    }
    if sum.net < 0 || sum.tax < 0 || sum.gross < 0 {
        return Err(InvoiceError::NegativeTotal);
    }
    Ok(sum)
}

/// Net and tax per rate (rate in basis points → sums), for the tax summary a document shows.
pub fn tax_summary<'a>(lines: impl IntoIterator<Item = (u32, &'a Amounts)>) -> BTreeMap<u32, Amounts> {
    let mut m: BTreeMap<u32, Amounts> = BTreeMap::new();
    for (rate, a) in lines {
        let e = m.entry(rate).or_default();
        *e = e.checked_add(*a).unwrap_or(*e);
    }
    m
}

/// Spreads a credit of `amount` (gross, minor units) over an invoice's lines, given what is
/// left to credit on each (`remaining`: rate and amounts, the line minus earlier credits).
///
/// The gross is split in proportion to each line's remaining gross (largest remainder, ties to
/// the earlier line), then each line's share is split into net and tax at the line's rate
/// (tax included) — kept within what is left of that line's net and tax. Crediting everything
/// that is left returns `remaining` exactly, so a series of partial credits that ends in a full
/// one credits exactly the invoice's net and tax, whatever the rounding on the way.
pub fn allocate_credit(remaining: &[(u32, Amounts)], amount: i64) -> Result<Vec<Amounts>, InvoiceError> {
    let total: i128 = remaining.iter().map(|(_, a)| i128::from(a.gross)).sum();
    if amount <= 0 || i128::from(amount) > total {
        return Err(InvoiceError::CreditOutOfRange);
    }
    if i128::from(amount) == total {
        return Ok(remaining.iter().map(|(_, a)| *a).collect());
    }
    let amt = i128::from(amount);
    let mut shares: Vec<i128> = Vec::with_capacity(remaining.len());
    let mut fracs: Vec<(i128, usize)> = Vec::with_capacity(remaining.len());
    for (i, (_, a)) in remaining.iter().enumerate() {
        let x = amt * i128::from(a.gross);
        shares.push(x.div_euclid(total));
        fracs.push((x.rem_euclid(total), i));
    }
    let mut left = amt - shares.iter().sum::<i128>();
    // Largest fractional part first; the earlier line on ties.
    fracs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (frac, i) in fracs {
        if left == 0 || frac == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    Ok(remaining
        .iter()
        .zip(shares)
        .map(|((rate, rem), share)| credit_line(*rate, *rem, share as i64))
        .collect())
}

/// Net and tax of `gross` credited on a line with `rem` left, at `rate_bp` (tax included),
/// within the line's remaining net and tax.
fn credit_line(rate_bp: u32, rem: Amounts, gross: i64) -> Amounts {
    if gross == rem.gross {
        return rem;
    }
    if rem.gross < 0 {
        return credit_line(rate_bp, rem.neg(), -gross).neg();
    }
    let ideal = split(gross, TaxKind::Inclusive, rate_bp).tax;
    let low = (gross - rem.net).max(0);
    let high = rem.tax.min(gross);
    let tax = ideal.clamp(low, high.max(low));
    Amounts { net: gross - tax, tax, gross }
}

/// What is left to credit on each line after `credited` (per line, summed over earlier credit
/// notes).
pub fn remaining(lines: &[(u32, Amounts)], credited: &[Amounts]) -> Vec<(u32, Amounts)> {
    lines
        .iter()
        .enumerate()
        .map(|(i, (rate, a))| (*rate, a.sub(credited.get(i).copied().unwrap_or_default())))
        .collect()
}

/// The series a document is numbered in: the storefront's prefix and the calendar year (UTC)
/// of issue; credit notes have their own (`INV-2026` and `INV-2026-CN`).
pub fn series(prefix: &str, year: i32, kind: DocumentKind) -> String {
    match kind {
        DocumentKind::Invoice => format!("{prefix}{year}"),
        DocumentKind::CreditNote => format!("{prefix}{year}-CN"),
    }
}

/// The prefix [`series`] rendered a series from (`INV-` for `INV-2026` and `INV-2026-CN`), or
/// `None` for a string no prefix renders to.
pub fn prefix_of_series(series: &str) -> Option<&str> {
    let s = series.strip_suffix("-CN").unwrap_or(series);
    let cut = s.len().checked_sub(4)?;
    (cut > 0 && s.is_char_boundary(cut) && s[cut..].bytes().all(|b| b.is_ascii_digit())).then(|| &s[..cut])
}

/// A document's number: its series and its sequence in it, six digits at least
/// (`INV-2026-000042`).
pub fn number(series: &str, sequence: i64) -> String {
    format!("{series}-{sequence:06}")
}

#[cfg(test)]
#[path = "invoice_tests.rs"]
mod tests;

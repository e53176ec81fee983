//! The catalog's vocabulary and rules: currencies and money, storefront policies, entitlements,
//! bundles and prices. Pure parsing and validation; no I/O.
//!
//! Price is the contract, entitlements are the promise: a bundle is a set of entitlements, sold
//! in many storefronts at different prices without being duplicated.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::iso;
use crate::validation::FieldError;

/// Declares a string enum with its wire names, `as_str`, parsing and an OpenAPI schema.
/// Paths are spelled in full so other modules of the crate can use it (`crate::catalog::wire_enum!`).
/// The wire names are `tt`, not `literal`: a `literal` fragment reaches the derives wrapped in an
/// invisible group that utoipa does not read, and the schema listed the Rust variant names.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $wire:tt),+ $(,)? }) => {
        $(#[$m])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            ::serde::Serialize, ::serde::Deserialize, ::utoipa::ToSchema,
        )]
        pub enum $name { $(#[serde(rename = $wire)] $variant),+ }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($wire => Ok($name::$variant),)+ _ => Err(()) }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum!(
    /// What kind of channel a storefront is.
    StorefrontType { Web => "web", Mobile => "mobile", Partner => "partner", Ott => "ott", Telecom => "telecom" }
);
wire_enum!(
    /// Whether a storefront sells.
    StorefrontStatus { Active => "active", Inactive => "inactive" }
);
wire_enum!(
    /// Whether prices include tax (VAT) or have it added.
    TaxKind { Inclusive => "inclusive", Exclusive => "exclusive" }
);
wire_enum!(
    /// What happens to a subscription when dunning is exhausted.
    EndAction { Expire => "expire", Cancel => "cancel" }
);
wire_enum!(
    /// A feature flag, or a quota counted in a unit.
    EntitlementKind { Boolean => "boolean", Quantity => "quantity" }
);
wire_enum!(
    /// Entitlements and prices are active or archived.
    ActiveStatus { Active => "active", Archived => "archived" }
);
wire_enum!(
    /// What a bundle is sold as.
    BundleType { Subscription => "subscription", OneTime => "one_time", AddOn => "add_on" }
);
wire_enum!(
    /// A bundle's life: drafted, sold, retired (existing subscriptions continue).
    BundleStatus { Draft => "draft", Active => "active", Archived => "archived" }
);
wire_enum!(
    /// The unit of a billing period.
    PeriodUnit { Day => "day", Week => "week", Month => "month", Year => "year" }
);

impl BundleStatus {
    /// Whether a bundle may move from `self` to `to`: draft → active → archived, and a draft may
    /// be archived without ever being sold. Nothing comes back from archived.
    pub fn can_become(self, to: BundleStatus) -> bool {
        use BundleStatus::*;
        matches!((self, to), (Draft, Active) | (Active, Archived) | (Draft, Archived))
    }
}

/// An ISO 4217 currency code that Azotte knows the exponent of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "EUR")]
pub struct Currency(String);

impl Currency {
    /// Parses an upper-case ISO 4217 code.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        match iso::currency_exponent(s) {
            Some(_) => Ok(Currency(s.to_owned())),
            None => Err(FieldError::new(
                field,
                "unknown_currency",
                format!("`{}` is not an ISO 4217 currency code (upper case, e.g. EUR)", clip(s)),
            )),
        }
    }

    /// Minor-unit digits: 2 for EUR, 0 for JPY, 3 for KWD.
    pub fn exponent(&self) -> u32 {
        iso::currency_exponent(&self.0).unwrap_or(2)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Currency::parse("currency", &s).map_err(|e| e.message)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses an ISO 3166-1 alpha-2 country code (upper case).
pub fn parse_country(field: &str, s: &str) -> Result<String, FieldError> {
    if iso::is_country(s) {
        Ok(s.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "unknown_country",
            format!("`{}` is not an ISO 3166-1 alpha-2 country code (upper case, e.g. DE)", clip(s)),
        ))
    }
}

/// Parses an ISO 639-1 language code (lower case).
pub fn parse_language(field: &str, s: &str) -> Result<String, FieldError> {
    if iso::is_language(s) {
        Ok(s.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "unknown_language",
            format!("`{}` is not an ISO 639-1 language code (lower case, e.g. en)", clip(s)),
        ))
    }
}

/// The largest amount accepted, in minor units (10^15: a trillion euros, and far from i64
/// overflow in any sum of a few thousand lines).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// An amount given either in minor units (`amount`) or as a decimal string in major units
/// (`amount_decimal`, e.g. `"14.99"`); exactly one. A decimal with more fractional digits than
/// the currency has is refused rather than rounded.
pub fn parse_amount(
    field: &str,
    amount: Option<i64>,
    decimal: Option<&str>,
    currency: &Currency,
) -> Result<i64, FieldError> {
    let v = match (amount, decimal) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                field,
                "ambiguous_amount",
                "give `amount` (minor units) or `amount_decimal`, not both",
            ))
        }
        (None, None) => {
            return Err(FieldError::new(
                field,
                "missing_field",
                "give `amount` in minor units, or `amount_decimal`",
            ))
        }
        (Some(a), None) => a,
        (None, Some(d)) => parse_decimal(&format!("{field}_decimal"), d, currency)?,
    };
    if v < 0 {
        return Err(FieldError::new(field, "negative_amount", "must not be negative"));
    }
    if v > MAX_AMOUNT {
        return Err(FieldError::new(
            field,
            "amount_too_large",
            format!("must be at most {MAX_AMOUNT} minor units"),
        ));
    }
    Ok(v)
}

/// A price charges something: 0 is refused (`amount_not_positive`). A free stretch of a
/// subscription is a trial or a goodwill extension; every period a price bills is charged,
/// invoiced and paid like any other. `None` (not parsed) passes: its error is reported already.
pub fn price_amount_positive(field: &str, amount: Option<i64>) -> Result<(), FieldError> {
    match amount {
        Some(0) => Err(FieldError::new(
            field,
            "amount_not_positive",
            "a price must charge something; a free period is a trial (or a goodwill extension)",
        )),
        _ => Ok(()),
    }
}

fn parse_decimal(field: &str, s: &str, currency: &Currency) -> Result<i64, FieldError> {
    let bad = || FieldError::new(field, "invalid_amount", "a decimal number in major units, e.g. \"14.99\"");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if s.starts_with('-') {
        return Err(FieldError::new(field, "negative_amount", "must not be negative"));
    }
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (s.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let exp = currency.exponent() as usize;
    if frac.len() > exp {
        return Err(FieldError::new(
            field,
            "too_precise",
            format!("{currency} has {exp} decimal place(s); `{}` has {}", clip(s), frac.len()),
        ));
    }
    let digits = format!("{whole}{frac:0<exp$}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 18 {
        return Err(FieldError::new(
            field.trim_end_matches("_decimal"),
            "amount_too_large",
            format!("must be at most {MAX_AMOUNT} minor units"),
        ));
    }
    if digits.is_empty() {
        return Ok(0);
    }
    digits.parse::<i64>().map_err(|_| bad())
}

/// An amount in minor units as a decimal string in major units: 1499 EUR → "14.99".
pub fn format_amount(amount: i64, currency: &Currency) -> String {
    let exp = currency.exponent();
    if exp == 0 {
        return amount.to_string();
    }
    let scale = 10i64.pow(exp);
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    let s = scale as u64;
    format!("{sign}{}.{:0width$}", a / s, a % s, width = exp as usize)
}

/// Money on the wire: integer minor units and the currency, plus the decimal for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Money {
    /// Minor units (cents for EUR, yen for JPY, fils for KWD).
    pub amount: i64,
    pub currency: Currency,
    /// The same amount in major units, for display (`"14.99"`).
    pub amount_decimal: String,
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Self {
        let amount_decimal = format_amount(amount, &currency);
        Money { amount, currency, amount_decimal }
    }
}

/// Basis points: 1900 is 19 %.
pub const MAX_RATE_BP: u32 = 10_000;

/// A storefront's tax scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxScheme {
    /// Whether prices include tax or have it added.
    pub kind: TaxKind,
    /// Default rate in basis points (1900 = 19 %), 0 to 10000.
    pub rate_bp: u32,
    /// Rates for particular countries of the storefront (country → basis points).
    #[serde(default)]
    pub overrides: BTreeMap<String, u32>,
}

impl TaxScheme {
    /// Checks rates and that every override names a country the storefront serves.
    pub fn validate(&self, countries: &BTreeSet<String>, errors: &mut Vec<FieldError>) {
        if self.rate_bp > MAX_RATE_BP {
            errors.push(FieldError::new("tax.rate_bp", "out_of_range", "must be 0 to 10000 basis points"));
        }
        for (c, r) in &self.overrides {
            let f = format!("tax.overrides.{}", clip(c));
            if let Err(e) = parse_country(&f, c) {
                errors.push(e);
            } else if !countries.contains(c) {
                errors.push(FieldError::new(
                    f.clone(),
                    "country_not_served",
                    "an override must name one of the storefront's countries",
                ));
            }
            if *r > MAX_RATE_BP {
                errors.push(FieldError::new(f, "out_of_range", "must be 0 to 10000 basis points"));
            }
        }
    }

    /// The rate for a country: its override, else the default.
    pub fn rate_for(&self, country: Option<&str>) -> u32 {
        country.and_then(|c| self.overrides.get(c).copied()).unwrap_or(self.rate_bp)
    }
}

/// Net, tax and gross of a price at a rate, in minor units. For an exclusive price the tax,
/// rounded half up to the minor unit, is added. For an inclusive price the net is
/// `amount / (1 + rate)` rounded half up and the tax is the rest of the amount (on an exact
/// half the tax rounds down).
pub fn tax_split(amount: i64, kind: TaxKind, rate_bp: u32) -> (i64, i64, i64) {
    let (a, r) = (i128::from(amount), i128::from(rate_bp));
    match kind {
        TaxKind::Exclusive => {
            let tax = (a * r + 5_000) / 10_000;
            (amount, tax as i64, (a + tax) as i64)
        }
        TaxKind::Inclusive => {
            // net = round(a * 10000 / (10000 + r)); tax = a - net
            let d = 10_000 + r;
            let net = (a * 10_000 * 2 + d) / (2 * d);
            (net as i64, (a - net) as i64, amount)
        }
    }
}

/// How a storefront retries failed renewals and how long customers keep access meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DunningPolicy {
    /// Days after the failed renewal at which to retry, strictly increasing (default 1, 3, 7).
    #[serde(default = "default_offsets")]
    pub retry_offsets_days: Vec<u32>,
    /// Days of grace after the period ends (default 7).
    #[serde(default = "default_grace")]
    pub grace_days: u32,
    /// Whether entitlements stay on during grace (default true).
    #[serde(default = "default_true")]
    pub access_during_grace: bool,
    /// What happens when retries are exhausted (default `expire`).
    #[serde(default = "default_end")]
    pub end_action: EndAction,
}

fn default_offsets() -> Vec<u32> {
    vec![1, 3, 7]
}
fn default_grace() -> u32 {
    7
}
fn default_true() -> bool {
    true
}
fn default_end() -> EndAction {
    EndAction::Expire
}

impl Default for DunningPolicy {
    fn default() -> Self {
        DunningPolicy {
            retry_offsets_days: default_offsets(),
            grace_days: default_grace(),
            access_during_grace: true,
            end_action: EndAction::Expire,
        }
    }
}

impl DunningPolicy {
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        let o = &self.retry_offsets_days;
        if o.len() > 10 {
            errors.push(FieldError::new("dunning.retry_offsets_days", "too_many", "at most 10 retries"));
        }
        if o.iter().any(|d| *d == 0 || *d > 60) {
            errors.push(FieldError::new(
                "dunning.retry_offsets_days",
                "out_of_range",
                "each offset is 1 to 60 days",
            ));
        }
        if o.windows(2).any(|w| w[0] >= w[1]) {
            errors.push(FieldError::new(
                "dunning.retry_offsets_days",
                "not_increasing",
                "offsets must be strictly increasing",
            ));
        }
        if self.grace_days > 60 {
            errors.push(FieldError::new("dunning.grace_days", "out_of_range", "0 to 60 days"));
        }
    }
}

wire_enum!(
    /// When a plan change (replace) takes effect: now, with credit for the unused time of the old
    /// price and a charge for the rest of the period at the new one (`immediate_prorated`), or
    /// at the next renewal, which then charges the new price (`at_period_end`).
    ReplacePolicy { ImmediateProrated => "immediate_prorated", AtPeriodEnd => "at_period_end" }
);

// `wire_enum!` owns the derives, so `#[derive(Default)]` is not an option here.
#[allow(clippy::derivable_impls)]
impl Default for ReplacePolicy {
    fn default() -> Self {
        ReplacePolicy::ImmediateProrated
    }
}

/// How a storefront's subscriptions may move (issues 8 and 9): trial eligibility, pausing and
/// plan changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecyclePolicy {
    /// Days after a customer's last trial or subscription of a bundle family ended before a new
    /// trial of that family is offered (default 180; one trial per family per customer always).
    #[serde(default = "default_cooldown")]
    pub trial_cooldown_days: u32,
    /// Whether a subscription may be paused during its trial (default false: a paused trial
    /// would stretch it).
    #[serde(default)]
    pub pause_trials: bool,
    /// How a plan change takes effect (default `immediate_prorated`).
    #[serde(default)]
    pub replace_policy: ReplacePolicy,
}

fn default_cooldown() -> u32 {
    180
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        LifecyclePolicy {
            trial_cooldown_days: default_cooldown(),
            pause_trials: false,
            replace_policy: ReplacePolicy::ImmediateProrated,
        }
    }
}

impl LifecyclePolicy {
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.trial_cooldown_days > 3650 {
            errors.push(FieldError::new("lifecycle.trial_cooldown_days", "out_of_range", "0 to 3650 days"));
        }
    }
}

/// Validates a stable key: `a-z`, digits and `_`, starting with a letter, 2 to 64 characters.
pub fn validate_key(field: &str, s: &str) -> Result<(), FieldError> {
    let ok = (2..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "invalid_key",
            "2 to 64 characters: a-z, 0-9 and _, starting with a letter",
        ))
    }
}

/// Validates a display name: 1 to `max` characters after trimming, no control characters.
pub fn validate_name(field: &str, s: &str, max: usize) -> Result<String, FieldError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max {
        return Err(FieldError::new(field, "invalid_length", format!("must be 1 to {max} characters long")));
    }
    if t.chars().any(char::is_control) {
        return Err(FieldError::new(field, "invalid_characters", "must not contain control characters"));
    }
    Ok(t.to_owned())
}

/// A billing period: `count` × `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BillingPeriod {
    pub unit: PeriodUnit,
    pub count: u32,
}

impl BillingPeriod {
    /// At least one unit, at most three years.
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        let max = match self.unit {
            PeriodUnit::Day => 1096,
            PeriodUnit::Week => 156,
            PeriodUnit::Month => 36,
            PeriodUnit::Year => 3,
        };
        if self.count == 0 {
            return Err(FieldError::new(
                format!("{field}.count"),
                "zero_period",
                "a billing period has at least one unit",
            ));
        }
        if self.count > max {
            return Err(FieldError::new(
                format!("{field}.count"),
                "out_of_range",
                format!("at most {max} {}s (three years)", self.unit),
            ));
        }
        Ok(())
    }
}

/// A trial offered with a price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Trial {
    /// Length in days, 1 to 365.
    pub days: u32,
    /// Whether a payment method is needed to start the trial.
    #[serde(default = "default_true")]
    pub payment_method_required: bool,
}

impl Trial {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        if self.days == 0 || self.days > 365 {
            return Err(FieldError::new(
                format!("{field}.days"),
                "out_of_range",
                "a trial lasts 1 to 365 days",
            ));
        }
        Ok(())
    }
}

/// The first cycle in a graph of keys (each key → the keys it includes), as the path that
/// closes it (`[a, b, a]`), or `None`.
pub fn find_cycle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    find_cycle_from(graph, None)
}

/// As [`find_cycle`], searching from `start` first, so a cycle through it is reported from it.
pub fn find_cycle_from(graph: &BTreeMap<String, Vec<String>>, start: Option<&str>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        k: &str,
        graph: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(k) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|p| p == k).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(k.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(k.to_owned(), Mark::Open);
        path.push(k.to_owned());
        for next in graph.get(k).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(k.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for k in start.into_iter().chain(graph.keys().map(String::as_str)) {
        if let Some(c) = visit(k, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(s: &str) -> Currency {
        Currency::parse("currency", s).unwrap()
    }

    #[test]
    fn amounts_respect_the_currency_exponent() {
        let (eur, jpy, kwd) = (cur("EUR"), cur("JPY"), cur("KWD"));
        assert_eq!(parse_amount("amount", Some(1499), None, &eur), Ok(1499));
        assert_eq!(parse_amount("amount", None, Some("14.99"), &eur), Ok(1499));
        assert_eq!(parse_amount("amount", None, Some("14.9"), &eur), Ok(1490));
        assert_eq!(parse_amount("amount", None, Some("14"), &eur), Ok(1400));
        assert_eq!(parse_amount("amount", None, Some("0.00"), &eur), Ok(0));
        assert_eq!(price_amount_positive("amount", Some(0)).unwrap_err().code, "amount_not_positive");
        assert_eq!(price_amount_positive("amount", Some(1)), Ok(()));
        assert_eq!(price_amount_positive("amount", None), Ok(()));
        assert_eq!(parse_amount("amount", None, Some("1500"), &jpy), Ok(1500));
        assert_eq!(parse_amount("amount", None, Some("1.234"), &kwd), Ok(1234));
        let code = |r: Result<i64, FieldError>| r.unwrap_err().code;
        assert_eq!(code(parse_amount("amount", None, Some("14.999"), &eur)), "too_precise");
        assert_eq!(code(parse_amount("amount", None, Some("1500.5"), &jpy)), "too_precise");
        assert_eq!(code(parse_amount("amount", None, Some("1.2345"), &kwd)), "too_precise");
        assert_eq!(code(parse_amount("amount", Some(-1), None, &eur)), "negative_amount");
        assert_eq!(code(parse_amount("amount", None, Some("-1.00"), &eur)), "negative_amount");
        assert_eq!(code(parse_amount("amount", Some(MAX_AMOUNT + 1), None, &eur)), "amount_too_large");
        assert_eq!(
            code(parse_amount("amount", None, Some("99999999999999999999999.00"), &eur)),
            "amount_too_large"
        );
        assert_eq!(code(parse_amount("amount", Some(1), Some("1"), &eur)), "ambiguous_amount");
        assert_eq!(code(parse_amount("amount", None, None, &eur)), "missing_field");
        for bad in ["", ".5", "1.", "1,00", "1e3", " 1", "0x10", "1.2.3"] {
            assert_eq!(code(parse_amount("amount", None, Some(bad), &eur)), "invalid_amount", "{bad:?}");
        }
    }

    #[test]
    fn amounts_format_in_major_units() {
        assert_eq!(format_amount(1499, &cur("EUR")), "14.99");
        assert_eq!(format_amount(5, &cur("EUR")), "0.05");
        assert_eq!(format_amount(1500, &cur("JPY")), "1500");
        assert_eq!(format_amount(1234, &cur("KWD")), "1.234");
        assert_eq!(format_amount(-5, &cur("EUR")), "-0.05");
    }

    #[test]
    fn currencies_parse_strictly() {
        assert!(Currency::parse("c", "EUR").is_ok());
        for bad in ["eur", "EURO", "XYZ", "", "E1R"] {
            assert_eq!(Currency::parse("c", bad).unwrap_err().code, "unknown_currency", "{bad}");
        }
    }

    #[test]
    fn tax_splits_round_half_up_and_add_up() {
        assert_eq!(tax_split(1000, TaxKind::Exclusive, 1900), (1000, 190, 1190));
        assert_eq!(tax_split(1190, TaxKind::Inclusive, 1900), (1000, 190, 1190));
        assert_eq!(tax_split(999, TaxKind::Inclusive, 2000), (833, 166, 999)); // 832.5 → 833
        assert_eq!(tax_split(5, TaxKind::Exclusive, 1000), (5, 1, 6)); // 0.5 → 1
        assert_eq!(tax_split(1499, TaxKind::Inclusive, 0), (1499, 0, 1499));
        for a in [0, 1, 7, 99, 1499, 123_456_789, MAX_AMOUNT] {
            for r in [0, 1, 700, 1900, 2500, 10_000] {
                for k in [TaxKind::Inclusive, TaxKind::Exclusive] {
                    let (net, tax, gross) = tax_split(a, k, r);
                    assert_eq!(net + tax, gross);
                    assert!(net >= 0 && tax >= 0);
                }
            }
        }
    }

    #[test]
    fn bundle_status_moves_forward_only() {
        use BundleStatus::*;
        assert!(Draft.can_become(Active) && Active.can_become(Archived) && Draft.can_become(Archived));
        assert!(!Archived.can_become(Active) && !Active.can_become(Draft) && !Archived.can_become(Draft));
        assert!(!Active.can_become(Active));
    }

    #[test]
    fn periods_trials_and_keys() {
        let p = |unit, count| BillingPeriod { unit, count }.validate("billing_period").map_err(|e| e.code);
        assert_eq!(p(PeriodUnit::Month, 1), Ok(()));
        assert_eq!(p(PeriodUnit::Month, 0), Err("zero_period"));
        assert_eq!(p(PeriodUnit::Year, 4), Err("out_of_range"));
        assert_eq!(
            Trial { days: 366, payment_method_required: true }.validate("trial").unwrap_err().code,
            "out_of_range"
        );
        assert!(Trial { days: 365, payment_method_required: false }.validate("trial").is_ok());
        assert!(validate_key("key", "premium_video").is_ok());
        for bad in ["P", "premium-video", "9lives", "x", "ä_b", &"a".repeat(65)] {
            assert!(validate_key("key", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dunning_defaults_are_sane_and_checked() {
        let d = DunningPolicy::default();
        let mut e = vec![];
        d.validate(&mut e);
        assert!(e.is_empty());
        assert_eq!(d.retry_offsets_days, [1, 3, 7]);
        let bad = DunningPolicy { retry_offsets_days: vec![3, 3, 0], grace_days: 90, ..d };
        bad.validate(&mut e);
        let codes: Vec<_> = e.iter().map(|e| e.code).collect();
        assert_eq!(codes, ["out_of_range", "not_increasing", "out_of_range"]);
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        let g = |edges: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            edges
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect()
        };
        assert_eq!(find_cycle(&g(&[("a", &["b"]), ("b", &["c"]), ("c", &[])])), None);
        assert_eq!(find_cycle(&g(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[])])), None);
        assert_eq!(
            find_cycle(&g(&[("a", &["b"]), ("b", &["a"])])),
            Some(vec!["a".into(), "b".into(), "a".into()])
        );
        assert_eq!(find_cycle(&g(&[("a", &["a"])])), Some(vec!["a".into(), "a".into()]));
        assert_eq!(
            find_cycle(&g(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])])),
            Some(vec!["b".into(), "c".into(), "b".into()])
        );
    }

    #[test]
    fn tax_overrides_must_be_served_countries() {
        let countries: BTreeSet<String> = ["DE".to_owned()].into();
        let t = TaxScheme {
            kind: TaxKind::Inclusive,
            rate_bp: 1900,
            overrides: [("FR".to_owned(), 2000), ("XX".to_owned(), 1), ("DE".to_owned(), 20_000)].into(),
        };
        let mut e = vec![];
        t.validate(&countries, &mut e);
        let codes: Vec<_> = e.iter().map(|e| (e.field.as_str(), e.code)).collect();
        assert_eq!(
            codes,
            [
                ("tax.overrides.DE", "out_of_range"),
                ("tax.overrides.FR", "country_not_served"),
                ("tax.overrides.XX", "unknown_country")
            ]
        );
        assert_eq!(t.rate_for(Some("DE")), 20_000);
        assert_eq!(t.rate_for(Some("AT")), 1900);
    }
}

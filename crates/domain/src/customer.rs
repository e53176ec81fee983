//! Customers: the tenant's end customers. Parsing and validation of their fields; no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::FieldError;

/// Whether a customer is a person or a company.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegalType {
    Individual,
    Company,
}

impl LegalType {
    pub fn as_str(self) -> &'static str {
        match self {
            LegalType::Individual => "individual",
            LegalType::Company => "company",
        }
    }
}

/// Parses an E.164 phone number (`+` then 8 to 15 digits, no leading zero); spaces, dashes,
/// dots and parentheses are removed first. Returns the normalized form.
pub fn parse_phone(field: &str, s: &str) -> Result<String, FieldError> {
    let cleaned: String = s.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    let digits = cleaned.strip_prefix('+').unwrap_or("");
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(cleaned)
    } else {
        Err(FieldError::new(
            field,
            "invalid_phone",
            "an E.164 number: + country code and number, e.g. +4915112345678",
        ))
    }
}

/// Checks a free-text personal field: trimmed, 1 to `max` characters, no control characters.
pub fn text(field: &str, s: &str, max: usize) -> Result<String, FieldError> {
    crate::catalog::validate_name(field, s, max)
}

/// Most keys in a customer's metadata.
pub const METADATA_MAX_KEYS: usize = 20;
/// Longest metadata key and value.
pub const METADATA_MAX_KEY: usize = 40;
pub const METADATA_MAX_VALUE: usize = 500;

/// Checks metadata: at most 20 keys of up to 40 characters (`a-z`, `0-9`, `_`, `-`, `.`),
/// string values of up to 500 characters.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if m.len() > METADATA_MAX_KEYS {
        return Err(FieldError::new(
            "metadata",
            "metadata_too_large",
            format!("at most {METADATA_MAX_KEYS} keys"),
        ));
    }
    for (k, v) in m {
        let key_ok = (1..=METADATA_MAX_KEY).contains(&k.len())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !key_ok {
            return Err(FieldError::new(
                "metadata",
                "invalid_metadata_key",
                format!("keys are 1 to {METADATA_MAX_KEY} characters of a-z, A-Z, 0-9, _, - and ."),
            ));
        }
        if v.chars().count() > METADATA_MAX_VALUE {
            return Err(FieldError::new(
                format!("metadata.{k}"),
                "metadata_too_large",
                format!("values are at most {METADATA_MAX_VALUE} characters"),
            ));
        }
    }
    Ok(())
}

/// Checks a tenant's external id: 1 to 128 printable characters.
pub fn external_id(field: &str, s: &str) -> Result<String, FieldError> {
    let ok = (1..=128).contains(&s.len()) && s.chars().all(|c| !c.is_control() && c != '/');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(FieldError::new(field, "invalid_external_id", "1 to 128 characters, no control characters or /"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_are_e164() {
        assert_eq!(parse_phone("phone", "+49 151 1234-5678").unwrap(), "+4915112345678");
        assert_eq!(parse_phone("phone", "+1 (415) 555.0100").unwrap(), "+14155550100");
        for bad in ["015112345678", "+0151123456", "+49", "+49151abc", "+4915112345678901", ""] {
            assert_eq!(parse_phone("phone", bad).unwrap_err().code, "invalid_phone", "{bad}");
        }
    }

    #[test]
    fn metadata_is_bounded() {
        let mut m = BTreeMap::new();
        m.insert("plan_source".to_owned(), "ads".to_owned());
        assert!(check_metadata(&m).is_ok());
        m.insert("x".repeat(41), "v".into());
        assert_eq!(check_metadata(&m).unwrap_err().code, "invalid_metadata_key");
        let big: BTreeMap<String, String> = (0..21).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(check_metadata(&big).unwrap_err().code, "metadata_too_large");
        let long: BTreeMap<String, String> = [("k".to_owned(), "v".repeat(501))].into();
        assert_eq!(check_metadata(&long).unwrap_err().field, "metadata.k");
    }

    #[test]
    fn external_ids() {
        assert!(external_id("external_id", "crm-42").is_ok());
        assert!(external_id("external_id", "").is_err());
        assert!(external_id("external_id", "a/b").is_err());
        assert!(external_id("external_id", &"x".repeat(129)).is_err());
    }
}

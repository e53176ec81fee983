//! Email addresses, normalized for lookup.

use std::fmt;

use crate::validation::FieldError;

/// A syntactically plausible email address, trimmed and lowercased.
///
/// Deliverability is not checked here; the shape is: one `@`, a non-empty local part of at most
/// 64 characters, a domain with a dot and no empty labels, no whitespace or control characters,
/// 254 characters at most.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Parses an email for the field `field`.
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let e = s.trim().to_lowercase();
        let bad =
            || FieldError::new(field, "invalid_email", "must be an email address like name@example.com");
        if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = e.split_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return Err(bad());
        }
        if !domain.contains('.')
            || domain.split('.').any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
        {
            return Err(bad());
        }
        Ok(Self(e))
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    // Personal data: keep it out of debug output and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(Email::parse("email", " Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@ex..com",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", Email::parse("e", "x@y.io").unwrap()), "Email([redacted])");
    }
}

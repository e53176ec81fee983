//! Tenants and their environments.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::FieldError;

/// A tenant's URL-safe handle: 3–63 characters, lowercase letters, digits and single hyphens,
/// starting with a letter and not ending with a hyphen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantSlug(String);

/// Slugs that would be confusing as tenant handles.
const RESERVED_SLUGS: &[&str] = &["platform", "admin", "api", "azotte", "system", "www"];

impl TenantSlug {
    /// Parses a slug, naming the rule it breaks.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let err = |code: &'static str, msg: &str| Err(FieldError::new("slug", code, msg));
        if s.len() < 3 || s.len() > 63 {
            return err("invalid_length", "must be 3 to 63 characters long");
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return err("invalid_characters", "may contain only lowercase letters a-z, digits and hyphens");
        }
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return err("invalid_format", "must start with a letter");
        }
        if s.ends_with('-') || s.contains("--") {
            return err("invalid_format", "must not end with a hyphen or contain two in a row");
        }
        if RESERVED_SLUGS.contains(&s) {
            return err("reserved", "is reserved");
        }
        Ok(Self(s.to_owned()))
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's display name: 1–200 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    /// Parses a display name.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let t = s.trim();
        if t.is_empty() || t.chars().count() > 200 {
            return Err(FieldError::new("name", "invalid_length", "must be 1 to 200 characters long"));
        }
        if t.chars().any(char::is_control) {
            return Err(FieldError::new("name", "invalid_characters", "must not contain control characters"));
        }
        Ok(Self(t.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable text form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(UnknownValue(s.chars().take(64).collect())) }
            }
        }
    };
}

/// A text that is not one of an enumeration's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value `{0}`")]
pub struct UnknownValue(pub String);

string_enum! {
    /// Whether a tenant may operate.
    TenantStatus { Active => "active", Suspended => "suspended" }
}

string_enum! {
    /// The environments every tenant has.
    Environment { Development => "development", Staging => "staging", Production => "production" }
}

string_enum! {
    /// Whether an environment moves real money.
    Mode { Test => "test", Live => "live" }
}

impl Environment {
    /// The mode an environment runs in: production is live, the others are test.
    pub fn mode(self) -> Mode {
        match self {
            Environment::Production => Mode::Live,
            Environment::Development | Environment::Staging => Mode::Test,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_rules() {
        assert!(TenantSlug::parse("acme").is_ok());
        assert!(TenantSlug::parse("acme-eu-2").is_ok());
        assert_eq!(TenantSlug::parse("ab").unwrap_err().code, "invalid_length");
        assert_eq!(TenantSlug::parse(&"a".repeat(64)).unwrap_err().code, "invalid_length");
        assert_eq!(TenantSlug::parse("Acme").unwrap_err().code, "invalid_characters");
        assert_eq!(TenantSlug::parse("ac me").unwrap_err().code, "invalid_characters");
        assert_eq!(TenantSlug::parse("1acme").unwrap_err().code, "invalid_format");
        assert_eq!(TenantSlug::parse("acme-").unwrap_err().code, "invalid_format");
        assert_eq!(TenantSlug::parse("ac--me").unwrap_err().code, "invalid_format");
        assert_eq!(TenantSlug::parse("admin").unwrap_err().code, "reserved");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(TenantName::parse("  Acme  ").unwrap().as_str(), "Acme");
        assert!(TenantName::parse("   ").is_err());
        assert!(TenantName::parse(&"x".repeat(201)).is_err());
        assert!(TenantName::parse("a\u{7}b").is_err());
    }

    #[test]
    fn environment_modes() {
        assert_eq!(Environment::Production.mode(), Mode::Live);
        assert_eq!(Environment::Development.mode(), Mode::Test);
        assert_eq!("staging".parse::<Environment>().unwrap(), Environment::Staging);
        assert!("prod".parse::<Environment>().is_err());
    }
}

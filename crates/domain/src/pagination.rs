//! Cursor pagination parameters.

use crate::validation::FieldError;

/// How many items a list returns: 1 to [`Limit::MAX`], default [`Limit::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(u32);

impl Limit {
    /// Largest page.
    pub const MAX: u32 = 100;
    /// Page size when none is asked for.
    pub const DEFAULT: u32 = 20;

    /// Parses an optional limit.
    pub fn parse(v: Option<i64>) -> Result<Self, FieldError> {
        match v {
            None => Ok(Self(Self::DEFAULT)),
            Some(n) if (1..=i64::from(Self::MAX)).contains(&n) => Ok(Self(n as u32)),
            Some(_) => {
                Err(FieldError::new("limit", "out_of_range", format!("must be between 1 and {}", Self::MAX)))
            }
        }
    }

    /// The limit as a number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(Limit::parse(None).unwrap().get(), 20);
        assert_eq!(Limit::parse(Some(100)).unwrap().get(), 100);
        assert!(Limit::parse(Some(0)).is_err());
        assert!(Limit::parse(Some(101)).is_err());
    }
}

//! `Idempotency-Key` values (DESIGN.md §8).

use std::fmt;

use crate::card_number::contains_card_number;
use crate::validation::FieldError;

/// The header that carries the key, also the field named in errors about it.
pub const HEADER: &str = "Idempotency-Key";

/// Longest accepted key, in bytes.
pub const MAX_LEN: usize = 255;

/// A client's idempotency key: 1 to 255 printable ASCII characters (space to `~`), holding no
/// card number (the key is stored as it is).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses the header's raw bytes.
    pub fn parse(raw: &[u8]) -> Result<Self, FieldError> {
        let bad = |m: &str| FieldError::new(HEADER, "idempotency_key_invalid", m);
        if raw.is_empty() || raw.len() > MAX_LEN {
            return Err(bad("must be 1 to 255 characters"));
        }
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(bad("must be printable ASCII characters only"));
        }
        let s = String::from_utf8_lossy(raw).into_owned();
        if s.trim().is_empty() {
            return Err(bad("must not be blank"));
        }
        if contains_card_number(&s) {
            return Err(bad("looks like a card number; use a random value such as a UUID"));
        }
        Ok(Self(s))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(IdempotencyKey::parse(b"a").unwrap().as_str(), "a");
        let uuid = b"0b9d7c3e-4a51-4f0e-9a7b-5d1c2e3f4a5b";
        assert!(IdempotencyKey::parse(uuid).is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert!(IdempotencyKey::parse(b"with space and ~!").is_ok());
        for bad in [&b""[..], &[b'k'; 256], b"tab\there", b"nul\0", "é".as_bytes(), b"   ", b"\x7f"] {
            let e = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!((e.field.as_str(), e.code), (HEADER, "idempotency_key_invalid"), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(b"4111111111111111").is_err(), "no card number stored");
    }
}

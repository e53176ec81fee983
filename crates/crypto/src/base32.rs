//! RFC 4648 base32 without padding; small enough that a dependency is not worth it.

const UPPER: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Encodes with the upper-case alphabet (what authenticator apps expect).
pub(crate) fn encode_upper(data: &[u8]) -> String {
    encode(data, UPPER)
}

/// Encodes with the lower-case alphabet (what our tokens and API keys use).
pub(crate) fn encode_lower(data: &[u8]) -> String {
    encode(data, LOWER)
}

fn encode(data: &[u8], alphabet: &[u8; 32]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u16 = 0;
    let mut bits: u32 = 0;
    for &byte in data {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(alphabet[usize::from((buffer >> bits) & 0x1f)]));
        }
        // Keep only the bits not yet emitted, so the shift above never overflows.
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(alphabet[usize::from((buffer << (5 - bits)) & 0x1f)]));
    }
    out
}

/// Which letter cases [`decode`] accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Case {
    /// Only `a-z2-7`.
    Lower,
    /// Upper and lower case letters, mixed.
    Any,
}

/// Decodes unpadded base32, or `None` for any character outside the alphabet, a length no
/// encoder produces, or non-zero trailing bits: exactly one string encodes a given value.
pub(crate) fn decode(s: &str, case: Case) -> Option<Vec<u8>> {
    // Lengths mod 8 of 1, 3 and 6 leave 5 or more dangling bits: no byte string encodes to them.
    if matches!(s.len() % 8, 1 | 3 | 6) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut buffer: u16 = 0;
    let mut bits: u32 = 0;
    for c in s.bytes() {
        let value = match c {
            b'a'..=b'z' => c - b'a',
            b'A'..=b'Z' if case == Case::Any => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u16::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    if buffer != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let vectors: [(&str, &str); 7] = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode_upper(plain.as_bytes()), encoded);
            assert_eq!(encode_lower(plain.as_bytes()), encoded.to_ascii_lowercase());
            assert_eq!(decode(encoded, Case::Any).as_deref(), Some(plain.as_bytes()));
            assert_eq!(decode(&encoded.to_ascii_lowercase(), Case::Lower).as_deref(), Some(plain.as_bytes()));
        }
    }

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).rev().collect();
        for len in 0..64 {
            let slice = &data[..len];
            assert_eq!(decode(&encode_lower(slice), Case::Lower).as_deref(), Some(slice));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("MZXW6===", Case::Any), None, "padding");
        assert_eq!(decode("MZXW6YQ1", Case::Any), None, "digit outside the alphabet");
        assert_eq!(decode("MZXW6", Case::Lower), None, "upper case where only lower is allowed");
        assert_eq!(decode("M", Case::Any), None, "impossible length");
        assert_eq!(decode("MZX", Case::Any), None, "impossible length");
        assert_eq!(decode("MY ", Case::Any), None, "whitespace");
        // "MY" is the canonical encoding of "f"; "MZ" differs only in a trailing bit.
        assert_eq!(decode("MY", Case::Any), Some(b"f".to_vec()));
        assert_eq!(decode("MZ", Case::Any), None, "non-zero trailing bits");
    }
}

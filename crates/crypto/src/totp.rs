//! RFC 6238 time-based one-time passwords: HMAC-SHA1, 30-second steps, 6 digits.

use azotte_domain::Secret;
use subtle::ConstantTimeEq;

use crate::base32;

/// Seconds per time step.
pub const STEP_SECS: i64 = 30;
/// Digits in the codes we issue and accept.
pub const DIGITS: u32 = 6;
/// Bytes in a generated secret (160 bits, the size RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
/// Shortest secret accepted (128 bits, RFC 4226's minimum).
pub const MIN_SECRET_LEN: usize = 16;

/// A TOTP shared secret.
#[derive(Clone, Debug)]
pub struct TotpSecret(Secret<Vec<u8>>);

/// Why bytes or text could not become a [`TotpSecret`].
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum TotpSecretError {
    /// Not unpadded RFC 4648 base32.
    #[error("the secret is not valid base32 (A-Z, 2-7, no padding)")]
    InvalidBase32,
    /// Fewer than [`MIN_SECRET_LEN`] bytes.
    #[error("the secret is shorter than 16 bytes")]
    TooShort,
}

impl TotpSecret {
    /// A fresh random 20-byte secret.
    pub fn generate() -> Self {
        Self(Secret::new(crate::random_bytes::<SECRET_LEN>().to_vec()))
    }

    /// A secret from raw bytes; at least [`MIN_SECRET_LEN`] of them.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, TotpSecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TotpSecretError::TooShort);
        }
        Ok(Self(Secret::new(bytes)))
    }

    /// The raw secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.expose()
    }

    /// Upper-case unpadded base32, the form authenticator apps take.
    pub fn to_base32(&self) -> Secret<String> {
        Secret::new(base32::encode_upper(self.as_bytes()))
    }

    /// Parses unpadded base32 (either case, as users type it) into a secret.
    pub fn from_base32(s: &str) -> Result<Self, TotpSecretError> {
        let bytes = base32::decode(s, base32::Case::Any).ok_or(TotpSecretError::InvalidBase32)?;
        Self::from_bytes(bytes)
    }
}

/// The `otpauth://` URI for provisioning an authenticator app (usually shown as a QR code).
///
/// It contains the secret: show it once, never log it.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        percent_encode(account),
        secret.to_base32().expose(),
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so `:`, `&`, `?`, `#`, `/`
/// and spaces in an issuer or account cannot change the URI's structure.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The time step containing `unix_time`.
fn step_of(unix_time: i64) -> i64 {
    unix_time.div_euclid(STEP_SECS)
}

/// The HOTP value (RFC 4226) for one counter, before reduction to digits.
fn hotp(secret: &TotpSecret, counter: u64) -> u32 {
    let digest = crate::mac::hmac_sha1(secret.as_bytes(), &[&counter.to_be_bytes()]);
    // Dynamic truncation: the low nibble of the last byte picks 4 bytes; the top bit is dropped.
    let offset = usize::from(digest[19] & 0x0f);
    let word = [digest[offset], digest[offset + 1], digest[offset + 2], digest[offset + 3]];
    u32::from_be_bytes(word) & 0x7fff_ffff
}

/// The code for `unix_time` with `digits` digits (use [`DIGITS`]; RFC test vectors use 8).
pub fn code_at(secret: &TotpSecret, unix_time: i64, digits: u32) -> u32 {
    code_for_step(secret, step_of(unix_time), digits)
}

fn code_for_step(secret: &TotpSecret, step: i64, digits: u32) -> u32 {
    // Steps before 1970 never occur; casting keeps this total without a panic path.
    let value = u64::from(hotp(secret, step as u64));
    // value < 2^31, so the remainder always fits in a u32.
    (value % 10u64.saturating_pow(digits)) as u32
}

/// Checks a 6-digit `code` against the steps around `unix_time` (one step either side, for
/// clock drift), refusing steps at or before `last_used_step` so a code cannot be replayed.
///
/// Returns the matched step, which the caller stores as the new `last_used_step`.
pub fn verify(secret: &TotpSecret, code: &str, unix_time: i64, last_used_step: Option<i64>) -> Option<i64> {
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step_of(unix_time);
    let mut matched = None;
    // All candidates are computed and compared in constant time, with no early exit, so the
    // timing does not tell which step (or how much of a code) matched.
    for step in [current - 1, current, current + 1] {
        let expected = format!("{:0width$}", code_for_step(secret, step, DIGITS), width = DIGITS as usize);
        let fresh = last_used_step.is_none_or(|last| step > last);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && fresh && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap()
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        let s = rfc_secret();
        for (t, code) in [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code_at(&s, t, 8), code, "T = {t}");
        }
        // RFC 4226 Appendix D (counter 0 and 1) with 6 digits.
        assert_eq!(code_at(&s, 0, 6), 755224);
        assert_eq!(code_at(&s, 30, 6), 287082);
    }

    fn six(s: &TotpSecret, t: i64) -> String {
        format!("{:06}", code_at(s, t, 6))
    }

    #[test]
    fn accepts_one_step_either_side() {
        let s = rfc_secret();
        let t = 1_700_000_010; // middle of step 56_666_667
        let step = t / 30;
        assert_eq!(verify(&s, &six(&s, t), t, None), Some(step));
        assert_eq!(verify(&s, &six(&s, t - 30), t, None), Some(step - 1));
        assert_eq!(verify(&s, &six(&s, t + 30), t, None), Some(step + 1));
        assert_eq!(verify(&s, &six(&s, t - 60), t, None), None);
        assert_eq!(verify(&s, &six(&s, t + 60), t, None), None);
        let other = TotpSecret::generate();
        assert_eq!(verify(&other, &six(&s, t), t, None), None);
    }

    #[test]
    fn refuses_replay() {
        let s = rfc_secret();
        let t = 1_700_000_010;
        let step = verify(&s, &six(&s, t), t, None).unwrap();
        assert_eq!(verify(&s, &six(&s, t), t, Some(step)), None, "same code again");
        assert_eq!(verify(&s, &six(&s, t), t + 25, Some(step)), None, "same code, later in the window");
        assert_eq!(verify(&s, &six(&s, t - 30), t, Some(step)), None, "an older code");
        assert_eq!(verify(&s, &six(&s, t + 30), t, Some(step)), Some(step + 1), "the next one is fine");
        assert_eq!(verify(&s, &six(&s, t), t, Some(step - 1)), Some(step));
    }

    #[test]
    fn refuses_malformed_codes() {
        let s = rfc_secret();
        let t = 1_700_000_010;
        let good = six(&s, t);
        for bad in [
            "".to_owned(),
            good[..5].to_owned(),
            format!("{good}0"),
            format!(" {}", &good[1..]),
            format!("+{}", &good[1..]),
            format!("{}a", &good[..5]),
            good.replace(|_: char| true, "٣"), // Arabic-Indic digits are not ASCII
            format!("{} ", &good[..5]),
        ] {
            assert_eq!(verify(&s, &bad, t, None), None, "{bad:?}");
        }
    }

    #[test]
    fn base32_round_trip_and_errors() {
        let s = TotpSecret::generate();
        assert_eq!(s.as_bytes().len(), SECRET_LEN);
        let text = s.to_base32();
        assert_eq!(text.expose().len(), 32);
        assert_eq!(TotpSecret::from_base32(text.expose()).unwrap().as_bytes(), s.as_bytes());
        assert_eq!(
            TotpSecret::from_base32(&text.expose().to_ascii_lowercase()).unwrap().as_bytes(),
            s.as_bytes()
        );
        assert_eq!(rfc_secret().to_base32().expose(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQ====").unwrap_err(),
            TotpSecretError::InvalidBase32
        );
        assert_eq!(TotpSecret::from_base32("GEZDGNBVGY3TQOJ1").unwrap_err(), TotpSecretError::InvalidBase32);
        assert_eq!(TotpSecret::from_base32("GEZDGNBVGY3TQOJQ").unwrap_err(), TotpSecretError::TooShort);
        assert_eq!(TotpSecret::from_bytes(vec![0; 15]).unwrap_err(), TotpSecretError::TooShort);
        assert_eq!(format!("{s:?}"), "TotpSecret([redacted])");
    }

    #[test]
    fn uri_shape() {
        let uri = otpauth_uri(&rfc_secret(), "Azotte Billing", "ana+ops@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Azotte%20Billing:ana%2Bops%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Azotte%20Billing&algorithm=SHA1&digits=6&period=30"
        );
        let uri = otpauth_uri(&rfc_secret(), "a:b&c", "x?y#z/é");
        assert!(uri.starts_with("otpauth://totp/a%3Ab%26c:x%3Fy%23z%2F%C3%A9?secret="), "{uri}");
        assert!(uri.contains("&issuer=a%3Ab%26c&"), "{uri}");
    }
}

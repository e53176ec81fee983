//! Envelope-encryption primitives: XChaCha20-Poly1305 sealing and HMAC-based key derivation.
//!
//! Sealed layout: `version (1) || nonce (24) || ciphertext || tag (16)`. The nonce is random:
//! XChaCha20's 192-bit nonces make collisions negligible without any counter state.

use azotte_domain::Secret;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The format byte written first by [`seal`].
const VERSION_1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The shortest input [`open`] can accept: version, nonce and tag around an empty message.
const MIN_SEALED_LEN: usize = 1 + NONCE_LEN + TAG_LEN;
/// Fixed context for [`Key::derive`], so derived keys cannot collide with other HMAC uses of
/// the same key.
const DERIVE_CONTEXT: &[u8] = b"azotte-crypto/aead/derive/v1\0";

/// A 256-bit symmetric key.
#[derive(Clone, Debug)]
pub struct Key(Secret<[u8; 32]>);

/// Why a hex string is not a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum KeyHexError {
    /// The string is not exactly 64 characters long.
    #[error("a key is 64 hex characters (32 bytes); got {0} characters")]
    WrongLength(usize),
    /// The string has a character outside `0-9a-fA-F`.
    #[error("a key is 64 hex characters (0-9, a-f); found another character")]
    NotHex,
}

impl Key {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self(Secret::new(crate::random_bytes()))
    }

    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Secret::new(bytes))
    }

    /// A key from 64 hex characters (either case), as kept in configuration.
    pub fn from_hex(s: &str) -> Result<Self, KeyHexError> {
        // Only the length is reported, never the content: the input is a secret.
        let chars = s.chars().count();
        if chars != 64 {
            return Err(KeyHexError::WrongLength(chars));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| KeyHexError::NotHex)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The raw key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// A subkey for one purpose: HMAC-SHA256 keyed by this key over a fixed context and
    /// `label`. Deterministic; different labels give independent keys.
    pub fn derive(&self, label: &str) -> Key {
        Key::from_bytes(crate::mac::hmac_sha256(self.expose(), &[DERIVE_CONTEXT, label.as_bytes()]))
    }
}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum AeadError {
    /// The plaintext is too long for one XChaCha20-Poly1305 message (256 GiB).
    #[error("plaintext too long to seal")]
    TooLong,
    /// The input is shorter than the smallest sealed message.
    #[error("sealed data is truncated")]
    Truncated,
    /// The first byte names a format we do not know.
    #[error("unknown sealed-data version")]
    UnknownVersion,
    /// Authentication failed: wrong key, wrong associated data, or modified data.
    #[error("sealed data could not be opened")]
    Decrypt,
}

/// The associated data actually authenticated: the version byte, then the caller's `aad`, so a
/// changed version byte fails authentication even if a later format reuses the key.
fn full_aad(version: u8, aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(1 + aad.len());
    full.push(version);
    full.extend_from_slice(aad);
    full
}

/// Encrypts and authenticates `plaintext`, binding it to `aad` (for example the table, column
/// and row id, so a ciphertext copied to another row does not open).
pub fn seal(key: &Key, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, AeadError> {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let nonce: [u8; NONCE_LEN] = crate::random_bytes();
    let ciphertext = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: &full_aad(VERSION_1, aad) })
        .map_err(|_| AeadError::TooLong)?;
    let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    sealed.push(VERSION_1);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// Checks and decrypts what [`seal`] produced with the same key and `aad`.
pub fn open(key: &Key, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, AeadError> {
    let Some((&version, rest)) = sealed.split_first() else {
        return Err(AeadError::Truncated);
    };
    if version != VERSION_1 {
        return Err(AeadError::UnknownVersion);
    }
    if sealed.len() < MIN_SEALED_LEN {
        return Err(AeadError::Truncated);
    }
    let (nonce, ciphertext) = rest.split_first_chunk::<NONCE_LEN>().ok_or(AeadError::Truncated)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(&XNonce::from(*nonce), Payload { msg: ciphertext, aad: &full_aad(version, aad) })
        .map_err(|_| AeadError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"psp_credentials.secret:row_42";

    #[test]
    fn round_trip() {
        let key = Key::generate();
        for plaintext in [&b""[..], b"x", b"sk_live_very_secret_value", &[0u8; 4096]] {
            let sealed = seal(&key, plaintext, AAD).unwrap();
            assert_eq!(sealed.len(), MIN_SEALED_LEN + plaintext.len());
            assert_eq!(sealed[0], VERSION_1);
            assert_eq!(open(&key, &sealed, AAD).unwrap(), plaintext);
        }
    }

    #[test]
    fn nonces_are_fresh() {
        let key = Key::generate();
        assert_ne!(seal(&key, b"same", AAD).unwrap(), seal(&key, b"same", AAD).unwrap());
    }

    #[test]
    fn ciphertext_copied_to_another_row_does_not_open() {
        let key = Key::generate();
        let sealed = seal(&key, b"secret", AAD).unwrap();
        assert_eq!(open(&key, &sealed, b"psp_credentials.secret:row_43"), Err(AeadError::Decrypt));
        assert_eq!(open(&key, &sealed, b""), Err(AeadError::Decrypt));
    }

    #[test]
    fn wrong_key_does_not_open() {
        let sealed = seal(&Key::generate(), b"secret", AAD).unwrap();
        assert_eq!(open(&Key::generate(), &sealed, AAD), Err(AeadError::Decrypt));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let key = Key::generate();
        let sealed = seal(&key, b"a short secret", AAD).unwrap();
        for i in 0..sealed.len() * 8 {
            let mut tampered = sealed.clone();
            tampered[i / 8] ^= 1 << (i % 8);
            let expected = if i < 8 { AeadError::UnknownVersion } else { AeadError::Decrypt };
            assert_eq!(open(&key, &tampered, AAD), Err(expected), "bit {i}");
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let key = Key::generate();
        let sealed = seal(&key, b"a short secret", AAD).unwrap();
        assert_eq!(open(&key, &[], AAD), Err(AeadError::Truncated));
        for len in 1..sealed.len() {
            let expected = if len < MIN_SEALED_LEN { AeadError::Truncated } else { AeadError::Decrypt };
            assert_eq!(open(&key, &sealed[..len], AAD), Err(expected), "len {len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open(&key, &longer, AAD), Err(AeadError::Decrypt));
    }

    #[test]
    fn derive_is_deterministic_and_label_separated() {
        let master = Key::from_bytes([3; 32]);
        let a = master.derive("psp-credentials");
        assert_eq!(a.expose(), master.derive("psp-credentials").expose());
        let b = master.derive("api-key-hash");
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.expose(), master.expose());
        assert_ne!(master.derive("").expose(), master.derive("\0").expose());
        assert_ne!(a.expose(), Key::from_bytes([4; 32]).derive("psp-credentials").expose());
        // A key derived for one label cannot open what another label's key sealed.
        let sealed = seal(&a, b"secret", AAD).unwrap();
        assert_eq!(open(&b, &sealed, AAD), Err(AeadError::Decrypt));
        // Pinned so that an accidental change of the derivation (which would orphan every
        // stored ciphertext) fails here first.
        assert_eq!(
            hex::encode(a.expose()),
            hex::encode(crate::mac::hmac_sha256(
                &[3; 32],
                &[b"azotte-crypto/aead/derive/v1\0psp-credentials"]
            ))
        );
    }

    #[test]
    fn from_hex() {
        let hex64 = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let key = Key::from_hex(hex64).unwrap();
        assert_eq!(key.expose()[..4], [0x00, 0x11, 0x22, 0x33]);
        assert_eq!(key.expose()[31], 0xff);
        assert_eq!(Key::from_hex(&hex64[..62]).unwrap_err(), KeyHexError::WrongLength(62));
        assert_eq!(Key::from_hex(&format!("{hex64}0")).unwrap_err(), KeyHexError::WrongLength(65));
        assert_eq!(Key::from_hex(&hex64.replace('0', "g")).unwrap_err(), KeyHexError::NotHex);
        assert_eq!(Key::from_hex(&format!(" {}", &hex64[1..])).unwrap_err(), KeyHexError::NotHex);
        assert_eq!(Key::from_hex(&format!("é{}", &hex64[1..])).unwrap_err(), KeyHexError::NotHex);
        assert_eq!(
            KeyHexError::WrongLength(3).to_string(),
            "a key is 64 hex characters (32 bytes); got 3 characters"
        );
        assert_eq!(format!("{key:?}"), "Key([redacted])");
    }
}

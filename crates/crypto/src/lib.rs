//! Azotte's cryptographic building blocks: pure functions, no I/O.
//!
//! - [`jwt`]: compact JWS access tokens, EdDSA (Ed25519) only.
//! - [`totp`]: RFC 6238 one-time passwords with replay refusal.
//! - [`aead`]: XChaCha20-Poly1305 sealing for envelope encryption, and key derivation.
//! - [`tokens`]: API keys (plaintext and hashed as distinct types) and opaque random tokens.
//!
//! Secret material is handed out in [`azotte_domain::Secret`] so that it never shows up in logs.

pub mod aead;
mod base32;
pub mod chain;
pub mod jwt;
mod mac;
pub mod tokens;
pub mod totp;

/// Fills a fresh array from the operating system's CSPRNG.
fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut out = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut out);
    out
}

//! HMAC helpers with no error path.
//!
//! `Mac::new_from_slice` returns a `Result` although HMAC takes keys of any length; instead of
//! handling an error that cannot happen (and picking some fallback value for it), we do the
//! RFC 2104 key preparation ourselves and use the infallible fixed-size constructor.

use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::generic_array::GenericArray;
use hmac::digest::{Digest, KeyInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The key as one hash block: hashed first if longer than a block, then zero-padded.
fn key_block<D: Digest + BlockSizeUser>(key: &[u8]) -> GenericArray<u8, D::BlockSize> {
    let mut block = GenericArray::<u8, D::BlockSize>::default();
    if key.len() > block.len() {
        block.iter_mut().zip(D::digest(key)).for_each(|(d, s)| *d = s);
    } else {
        block.iter_mut().zip(key).for_each(|(d, s)| *d = *s);
    }
    block
}

/// HMAC-SHA1 over the concatenation of `parts`.
pub(crate) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as KeyInit>::new(&key_block::<Sha1>(key));
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&key_block::<Sha256>(key));
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_library_for_every_key_length() {
        let msg = b"what do ya want for nothing?";
        for len in 0..200 {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut m1 = <Hmac<Sha1> as Mac>::new_from_slice(&key).unwrap();
            m1.update(msg);
            assert_eq!(
                hmac_sha1(&key, &[&msg[..4], &msg[4..]]),
                <[u8; 20]>::from(m1.finalize().into_bytes())
            );
            let mut m256 = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            m256.update(msg);
            assert_eq!(hmac_sha256(&key, &[msg]), <[u8; 32]>::from(m256.finalize().into_bytes()));
        }
    }

    #[test]
    fn rfc4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

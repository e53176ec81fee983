//! Prefixed, time-sortable identifiers: `ten_01jd…` is a type prefix and a UUIDv7 in Crockford
//! base32 (26 characters), so ids sort by creation time and double as pagination cursors.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A kind of entity with its own id prefix.
pub trait IdKind: 'static + Send + Sync {
    /// The prefix written before the underscore, e.g. `ten`.
    const PREFIX: &'static str;
}

/// An id of one entity kind.
pub struct Id<K: IdKind> {
    uuid: Uuid,
    kind: PhantomData<fn() -> K>,
}

/// Why a string is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error("expected an id starting with `{0}_`")]
    WrongPrefix(&'static str),
    #[error("malformed id")]
    Malformed,
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Character → 5-bit value (upper case accepted), 0xff for characters outside the alphabet.
const DECODE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        t[ALPHABET[i].to_ascii_uppercase() as usize] = i as u8;
        i += 1;
    }
    t
};

fn decode_char(c: u8) -> Option<u8> {
    let v = DECODE[c as usize];
    (v != 0xff).then_some(v)
}

impl<K: IdKind> Id<K> {
    /// A fresh id for now (UUIDv7: millisecond time prefix + randomness).
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self { uuid, kind: PhantomData }
    }

    /// The UUID underneath.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The milliseconds since the Unix epoch in the id's time prefix (UUIDv7's first 48 bits).
    pub fn unix_ms(&self) -> u64 {
        (self.uuid.as_u128() >> 80) as u64
    }

    /// The smallest id of millisecond `ms`: every id made in that millisecond or later sorts at or
    /// after it, as a string too; every id of an earlier one, before it.
    pub fn first_of_unix_ms(ms: u64) -> Self {
        Self::from_uuid(Uuid::from_u128(u128::from(ms & 0xffff_ffff_ffff) << 80))
    }

    fn encode_body(&self) -> String {
        let n = self.uuid.as_u128();
        // 26 characters of 5 bits = 130 bits; the first character carries the top 3 bits.
        (0..26)
            .map(|i| {
                let shift = 125 - 5 * i;
                let v = if shift >= 0 { (n >> shift) & 0x1f } else { (n << -shift) & 0x1f };
                ALPHABET[v as usize] as char
            })
            .collect()
    }
}

impl<K: IdKind> Default for Id<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: IdKind> Clone for Id<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: IdKind> Copy for Id<K> {}

impl<K: IdKind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
    }
}
impl<K: IdKind> Eq for Id<K> {}
impl<K: IdKind> Hash for Id<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.uuid.hash(state)
    }
}
impl<K: IdKind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: IdKind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.uuid.cmp(&other.uuid)
    }
}

impl<K: IdKind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", K::PREFIX, self.encode_body())
    }
}

impl<K: IdKind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<K: IdKind> FromStr for Id<K> {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .strip_prefix(K::PREFIX)
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(IdParseError::WrongPrefix(K::PREFIX))?;
        let bytes = body.as_bytes();
        if bytes.len() != 26 {
            return Err(IdParseError::Malformed);
        }
        let first = decode_char(bytes[0]).ok_or(IdParseError::Malformed)?;
        if first > 7 {
            return Err(IdParseError::Malformed);
        }
        let mut n: u128 = u128::from(first);
        for &c in &bytes[1..] {
            let v = decode_char(c).ok_or(IdParseError::Malformed)?;
            n = (n << 5) | u128::from(v);
        }
        Ok(Self::from_uuid(Uuid::from_u128(n)))
    }
}

impl<K: IdKind> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl<K: IdKind> utoipa::PartialSchema for Id<K> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(format!("Identifier with prefix `{}_`", K::PREFIX)))
            .examples([serde_json::Value::String(format!("{}_01jdq3m9x7e5k4w2c8v6b0n1p2", K::PREFIX))])
            .into()
    }
}
impl<K: IdKind> utoipa::ToSchema for Id<K> {}

/// Declares an id kind and a type alias: `id_kind!(TenantKind, TenantId, "ten")`.
#[macro_export]
macro_rules! id_kind {
    ($kind:ident, $alias:ident, $prefix:literal) => {
        #[doc = concat!("Marker for ids prefixed `", $prefix, "_`.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $kind {}
        impl $crate::id::IdKind for $kind {
            const PREFIX: &'static str = $prefix;
        }
        #[doc = concat!("Id prefixed `", $prefix, "_`.")]
        pub type $alias = $crate::id::Id<$kind>;
    };
}

id_kind!(TenantKind, TenantId, "ten");
id_kind!(UserKind, UserId, "usr");
id_kind!(SessionKind, SessionId, "ses");
id_kind!(RequestKind, RequestId, "req");
id_kind!(JournalKind, JournalId, "jnl");
id_kind!(StorefrontKind, StorefrontId, "sfr");
id_kind!(EntitlementKind, EntitlementId, "ent");
id_kind!(BundleKind, BundleId, "bnd");
id_kind!(PriceKind, PriceId, "prc");
id_kind!(PriceVersionKind, PriceVersionId, "prv");
id_kind!(PspAccountKind, PspAccountId, "psp");
id_kind!(CustomerKind, CustomerId, "cus");
id_kind!(PaymentMethodKind, PaymentMethodId, "pm");
id_kind!(OfferKind, OfferId, "ofr");
id_kind!(CheckoutKind, CheckoutId, "chk");
id_kind!(SubscriptionKind, SubscriptionId, "sub");
id_kind!(ReplacementKind, ReplacementId, "rpl");
id_kind!(InvoiceKind, InvoiceId, "inv");
id_kind!(CreditNoteKind, CreditNoteId, "cn");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_has_prefix_and_26_chars() {
        let id = TenantId::new();
        let s = id.to_string();
        assert!(s.starts_with("ten_"));
        assert_eq!(s.len(), 4 + 26);
        assert_eq!(s.parse::<TenantId>().unwrap(), id);
    }

    #[test]
    fn wrong_prefix_and_garbage_are_rejected() {
        let id = TenantId::new().to_string();
        assert_eq!(id.replace("ten_", "usr_").parse::<TenantId>(), Err(IdParseError::WrongPrefix("ten")));
        assert_eq!("ten_xyz".parse::<TenantId>(), Err(IdParseError::Malformed));
        assert_eq!("ten_8zzzzzzzzzzzzzzzzzzzzzzzzz".parse::<TenantId>(), Err(IdParseError::Malformed));
        assert_eq!("ten_0000000000000000000000000u".parse::<TenantId>(), Err(IdParseError::Malformed));
    }

    #[test]
    fn later_ids_sort_after_earlier_ones_as_strings() {
        let a = TenantId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TenantId::new();
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn the_first_id_of_a_millisecond_bounds_the_ids_around_it() {
        let id = TenantId::new();
        let ms = id.unix_ms();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(ms <= now && now - ms < 60_000, "{ms} against {now}");
        let floor = TenantId::first_of_unix_ms(ms);
        assert_eq!(floor.unix_ms(), ms);
        assert!(floor.to_string() <= id.to_string());
        let before = TenantId::from_uuid(Uuid::from_u128((u128::from(ms - 1) << 80) | ((1 << 80) - 1)));
        assert!(before.to_string() < floor.to_string());
        assert!(TenantId::first_of_unix_ms(ms + 1).to_string() > id.to_string());
    }

    proptest! {
        #[test]
        fn round_trip_and_order_preserved(x in any::<u128>(), y in any::<u128>()) {
            let a = TenantId::from_uuid(Uuid::from_u128(x));
            let b = TenantId::from_uuid(Uuid::from_u128(y));
            prop_assert_eq!(a.to_string().parse::<TenantId>().unwrap(), a);
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
        }
    }
}

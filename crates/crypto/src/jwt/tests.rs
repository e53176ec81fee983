use super::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NOW: i64 = 1_700_000_000;

fn claims() -> Claims {
    Claims {
        iss: "https://auth.azotte.test".into(),
        aud: "azotte-api".into(),
        sub: "usr_01".into(),
        tid: Some("ten_01".into()),
        roles: vec!["owner".into()],
        amr: vec!["pwd".into(), "otp".into()],
        iat: NOW,
        nbf: NOW,
        exp: NOW + 900,
        jti: "jti_01".into(),
        sid: "ses_01".into(),
    }
}

fn validation() -> Validation {
    Validation {
        issuer: "https://auth.azotte.test".into(),
        audience: "azotte-api".into(),
        now: NOW,
        leeway_secs: 30,
    }
}

struct Keys {
    a: SigningKey,
    b: SigningKey,
}

fn keys() -> Keys {
    Keys { a: SigningKey::from_bytes("key-a", &[7u8; 32]), b: SigningKey::from_bytes("key-b", &[9u8; 32]) }
}

impl Keys {
    /// The verifier's key set: both `a` and `b` are trusted.
    fn lookup(&self) -> impl Fn(&str) -> Option<VerifyingKey> + '_ {
        move |kid| [&self.a, &self.b].into_iter().find(|k| k.kid() == kid).map(SigningKey::verifying_key)
    }
}

fn b64s(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Signs arbitrary header and payload JSON with an Ed25519 key, as an attacker holding that key
/// (or a careless issuer) could.
fn sign_raw(key: &SigningKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64s(header), b64s(payload));
    let sig = key.key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn payload() -> String {
    claims().to_json().to_string()
}

fn check(token: &str) -> Result<Claims, JwtError> {
    let k = keys();
    decode(token, k.lookup(), &validation())
}

#[test]
fn round_trip() {
    let k = keys();
    let token = encode(&k.a, &claims());
    assert_eq!(decode(&token, k.lookup(), &validation()), Ok(claims()));

    let without_tenant = Claims { tid: None, ..claims() };
    let token = encode(&k.b, &without_tenant);
    let body = URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap();
    assert!(!String::from_utf8(body).unwrap().contains("tid"), "absent tid is not serialized");
    assert_eq!(decode(&token, k.lookup(), &validation()), Ok(without_tenant));
}

#[test]
fn payload_matches_serde_serialization() {
    assert_eq!(claims().to_json(), serde_json::to_value(claims()).unwrap());
    let c = Claims { tid: None, ..claims() };
    assert_eq!(c.to_json(), serde_json::to_value(&c).unwrap());
}

#[test]
fn header_is_exactly_as_specified() {
    let token = encode(&SigningKey::from_bytes(r#"k"1"#, &[1; 32]), &claims());
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
    assert_eq!(String::from_utf8(header).unwrap(), r#"{"alg":"EdDSA","typ":"JWT","kid":"k\"1"}"#);
}

#[test]
fn keys_round_trip_and_jwk_shape() {
    let sk = SigningKey::generate("k1");
    let again = SigningKey::from_bytes("k1", sk.to_bytes().expose());
    assert_eq!(again.verifying_key(), sk.verifying_key());
    let vk = sk.verifying_key();
    assert_eq!(vk.kid(), "k1");
    assert_eq!(VerifyingKey::from_bytes("k1", &vk.to_bytes()), Ok(vk.clone()));
    assert_eq!(
        vk.to_jwk(),
        serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(vk.to_bytes()),
            "kid": "k1", "alg": "EdDSA", "use": "sig"
        })
    );
    assert!(!format!("{sk:?}").contains(&format!("{:?}", sk.to_bytes().expose())));
    assert_eq!(format!("{:?}", sk.to_bytes()), "[redacted]");
}

#[test]
fn verifying_key_refuses_small_order_points() {
    // The identity point: every signature with R = identity and s = 0 would "verify" under it
    // with lax rules.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(VerifyingKey::from_bytes("x", &identity), Err(InvalidVerifyingKey));
}

#[test]
fn alg_none_is_refused() {
    let header = b64s(r#"{"alg":"none","typ":"JWT","kid":"key-a"}"#);
    let body = b64s(&payload());
    assert_eq!(check(&format!("{header}.{body}.")), Err(JwtError::UnsupportedAlgorithm));
    assert_eq!(check(&format!("{header}.{body}")), Err(JwtError::Malformed));
    // With a genuine signature segment lifted from a real token.
    let real = encode(&keys().a, &claims());
    let sig = real.rsplit('.').next().unwrap();
    assert_eq!(check(&format!("{header}.{body}.{sig}")), Err(JwtError::UnsupportedAlgorithm));
    // Casing games.
    for alg in ["None", "NONE", "nOnE"] {
        let header = b64s(&format!(r#"{{"alg":"{alg}","kid":"key-a"}}"#));
        assert_eq!(check(&format!("{header}.{body}.")), Err(JwtError::UnsupportedAlgorithm));
    }
}

#[test]
fn every_other_alg_is_refused_even_with_a_valid_signature() {
    let k = keys();
    for alg in [
        r#""HS256""#,
        r#""RS256""#,
        r#""ES256""#,
        r#""Ed25519""#,
        r#""eddsa""#,
        r#""EdDSA ""#,
        r#"" EdDSA""#,
        r#""EdDSA\u0000""#,
        "null",
        r#"["EdDSA"]"#,
        "1",
    ] {
        let token = sign_raw(&k.a, &format!(r#"{{"alg":{alg},"kid":"key-a"}}"#), &payload());
        assert_eq!(check(&token), Err(JwtError::UnsupportedAlgorithm), "alg {alg}");
    }
    let token = sign_raw(&k.a, r#"{"kid":"key-a"}"#, &payload());
    assert_eq!(check(&token), Err(JwtError::UnsupportedAlgorithm), "missing alg");
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let vk = keys().a.verifying_key();
    let Value::String(x) = vk.to_jwk()["x"].clone() else { panic!("x is a string") };
    let jwk_text = vk.to_jwk().to_string();
    let secrets: [&[u8]; 3] = [&vk.to_bytes(), x.as_bytes(), jwk_text.as_bytes()];
    for secret in secrets {
        let input = format!("{}.{}", b64s(r#"{"alg":"HS256","typ":"JWT","kid":"key-a"}"#), b64s(&payload()));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        assert_eq!(check(&token), Err(JwtError::UnsupportedAlgorithm));
    }
}

#[test]
fn unknown_kid_is_refused() {
    let stranger = SigningKey::generate("key-z");
    assert_eq!(check(&encode(&stranger, &claims())), Err(JwtError::UnknownKey));
}

#[test]
fn tampered_payload_is_refused() {
    let token = encode(&keys().a, &claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let forged = Claims { roles: vec!["platform_admin".into()], ..claims() };
    parts[1] = b64s(&forged.to_json().to_string());
    assert_eq!(check(&parts.join(".")), Err(JwtError::BadSignature));
}

#[test]
fn kid_swapped_to_another_trusted_key_is_refused() {
    let token = encode(&keys().a, &claims());
    let (_, rest) = token.split_once('.').unwrap();
    let header = b64s(r#"{"alg":"EdDSA","typ":"JWT","kid":"key-b"}"#);
    assert_eq!(check(&format!("{header}.{rest}")), Err(JwtError::BadSignature));
}

#[test]
fn signature_from_another_key_is_refused() {
    let impostor = SigningKey::from_bytes("key-a", &[42u8; 32]);
    assert_eq!(check(&encode(&impostor, &claims())), Err(JwtError::BadSignature));
    // Another trusted key's signature grafted onto a token naming `key-a`.
    let k = keys();
    let real = encode(&k.a, &claims());
    let other = encode(&k.b, &claims());
    let (input, _) = real.rsplit_once('.').unwrap();
    let (_, sig) = other.rsplit_once('.').unwrap();
    assert_eq!(check(&format!("{input}.{sig}")), Err(JwtError::BadSignature));
}

#[test]
fn malleated_signature_is_refused() {
    // s + L is the classic second encoding of the same signature; verify_strict must refuse it.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let token = encode(&keys().a, &claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mut carry = 0u16;
    for (byte, l) in sig[32..].iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(check(&forged), Err(JwtError::BadSignature));
}

#[test]
fn expiry_and_not_before_respect_leeway() {
    let k = keys();
    let at = |exp: i64, nbf: i64| {
        decode(&encode(&k.a, &Claims { exp, nbf, ..claims() }), k.lookup(), &validation())
    };
    assert_eq!(at(NOW - 29, NOW - 900).map(|c| c.exp), Ok(NOW - 29), "expired, but within leeway");
    assert_eq!(at(NOW - 30, NOW - 900), Err(JwtError::Expired), "exp == now - leeway");
    assert_eq!(at(NOW - 31, NOW - 900), Err(JwtError::Expired));
    assert_eq!(at(NOW + 900, NOW + 30).map(|c| c.nbf), Ok(NOW + 30), "nbf == now + leeway");
    assert_eq!(at(NOW + 900, NOW + 31), Err(JwtError::NotYetValid));
    let strict = Validation { leeway_secs: 0, ..validation() };
    let t = encode(&k.a, &Claims { exp: NOW, ..claims() });
    assert_eq!(decode(&t, k.lookup(), &strict), Err(JwtError::Expired), "exp == now");
}

#[test]
fn wrong_issuer_or_audience_is_refused() {
    let k = keys();
    let token = encode(&k.a, &Claims { iss: "https://evil.test".into(), ..claims() });
    assert_eq!(decode(&token, k.lookup(), &validation()), Err(JwtError::WrongIssuer));
    let token = encode(&k.a, &Claims { aud: "azotte-admin".into(), ..claims() });
    assert_eq!(decode(&token, k.lookup(), &validation()), Err(JwtError::WrongAudience));
}

#[test]
fn padding_alphabet_and_garbage_are_malformed() {
    let token = encode(&keys().a, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    for i in 0..3 {
        let mut padded: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
        padded[i].push('=');
        assert_eq!(check(&padded.join(".")), Err(JwtError::Malformed), "padding on segment {i}");
    }
    let std_alphabet = token.replace('-', "+").replace('_', "/");
    if std_alphabet != token {
        assert_eq!(check(&std_alphabet), Err(JwtError::Malformed));
    }
    for garbage in
        ["", ".", "..", "...", "a.b.c", "a.b", &format!("{token}."), &format!(".{token}"), "%%%.%%%.%%%"]
    {
        assert_eq!(check(garbage), Err(JwtError::Malformed), "{garbage:?}");
    }
    assert_eq!(check(&format!("{token}.{}", parts[2])), Err(JwtError::Malformed), "four segments");
    assert_eq!(check(&format!(" {token}")), Err(JwtError::Malformed));
    let short_sig = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
    assert_eq!(check(&short_sig), Err(JwtError::Malformed));
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_LEN), parts[2]);
    assert_eq!(check(&huge), Err(JwtError::Malformed));
}

#[test]
fn header_rules() {
    let k = keys();
    let ok = sign_raw(&k.a, r#"{"alg":"EdDSA","kid":"key-a"}"#, &payload());
    assert_eq!(check(&ok), Ok(claims()), "typ may be absent");
    let ok = sign_raw(&k.a, r#"{"alg":"EdDSA","kid":"key-a","typ":"JWT","x5u":"ignored"}"#, &payload());
    assert_eq!(check(&ok), Ok(claims()), "unknown header fields are ignored");
    for header in [
        r#"{"alg":"EdDSA","kid":"key-a","typ":"at+jwt"}"#,
        r#"{"alg":"EdDSA","kid":"key-a","typ":null}"#,
        r#"{"alg":"EdDSA","kid":"key-a","crit":["exp"]}"#,
        r#"{"alg":"EdDSA","kid":"key-a","crit":null}"#,
        r#"{"alg":"EdDSA"}"#,
        r#"{"alg":"EdDSA","kid":7}"#,
        r#"{"alg":"EdDSA","kid":"key-a","alg":"EdDSA"}"#,
        r#"{"alg":"none","kid":"key-a","alg":"EdDSA"}"#,
        r#"["EdDSA"]"#,
        "not json",
    ] {
        assert_eq!(check(&sign_raw(&k.a, header, &payload())), Err(JwtError::Malformed), "{header}");
    }
}

#[test]
fn claims_rules() {
    let k = keys();
    let mut extra = claims().to_json();
    extra["scope"] = Value::String("everything".into());
    assert_eq!(check(&sign_raw(&k.a, r#"{"alg":"EdDSA","kid":"key-a"}"#, &extra.to_string())), Ok(claims()));
    let mut missing = claims().to_json();
    missing.as_object_mut().unwrap().remove("sid");
    assert_eq!(
        check(&sign_raw(&k.a, r#"{"alg":"EdDSA","kid":"key-a"}"#, &missing.to_string())),
        Err(JwtError::Malformed)
    );
    assert_eq!(check(&sign_raw(&k.a, r#"{"alg":"EdDSA","kid":"key-a"}"#, "[]")), Err(JwtError::Malformed));
}

#[test]
fn lookup_receives_the_header_kid() {
    let k = keys();
    let token = encode(&k.b, &claims());
    let seen = std::cell::RefCell::new(Vec::new());
    let lookup = |kid: &str| {
        seen.borrow_mut().push(kid.to_owned());
        (kid == "key-b").then(|| k.b.verifying_key())
    };
    assert_eq!(decode(&token, lookup, &validation()), Ok(claims()));
    assert_eq!(*seen.borrow(), vec!["key-b".to_owned()]);
}

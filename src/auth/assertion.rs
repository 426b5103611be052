//! `private_key_jwt` client authentication for SMART Backend Services
//! (https://hl7.org/fhir/smart-app-launch/backend-services.html#request-access-token,
//! RFC 7523 section 2.2): the client signs a short-lived JWT with a key whose public half it
//! registered as a JWKS or a JWKS URL.
//!
//! The checks, each one an attack refused: the algorithm is RS384 or ES384 (never `none` or an
//! HMAC keyed with a public key); the `kid` names one of the client's keys; `iss` and `sub` are
//! the client id; `aud` is this token endpoint; `exp` is in the future and at most five minutes
//! ahead; `jti` is new (the caller records it, [`crate::store::Store::remember_assertion`]).

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// `client_assertion_type` of a JWT assertion (RFC 7523 section 2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Algorithms accepted for client assertions (SMART Backend Services: RS384 and ES384).
pub const ALGORITHMS: &[&str] = &["RS384", "ES384"];

/// The furthest ahead an assertion's `exp` may be, in seconds.
pub const MAX_LIFETIME_SECONDS: i64 = 300;

/// Clock difference tolerated for `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AssertionError {
    #[error("the client assertion is not a well-formed JWT")]
    Malformed,
    #[error("the client assertion must be signed with RS384 or ES384")]
    Algorithm,
    #[error("the client assertion's kid names none of the client's registered keys")]
    UnknownKey,
    #[error("the client assertion's signature does not verify")]
    Signature,
    #[error("the client assertion has expired")]
    Expired,
    #[error("the client assertion expires more than five minutes ahead")]
    TooLong,
    #[error("the client assertion is not valid yet")]
    NotYetValid,
    #[error("the client assertion's aud is not this token endpoint")]
    Audience,
    #[error("the client assertion's iss and sub must both be the client id")]
    Issuer,
    #[error("the client assertion has no jti")]
    NoJti,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default)]
    jti: Option<String>,
}

/// The `iss` of an assertion before it is verified: which client's keys to verify it with.
pub fn claimed_client(assertion: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    super::token::unverified_claims::<Iss>(assertion).map(|c| c.iss)
}

/// The key of `keys` an assertion with this header names.
fn key_for<'a>(keys: &'a JwkSet, kid: &str, alg: &str) -> Option<&'a Jwk> {
    keys.keys.iter().find(|k| {
        k.common.key_id.as_deref() == Some(kid)
            && k.common
                .key_algorithm
                .is_none_or(|a| format!("{a:?}") == alg)
    })
}

/// True when `keys` holds a key for `kid` (to decide whether a JWKS URL needs fetching again).
pub fn has_kid(keys: &JwkSet, assertion: &str) -> bool {
    jsonwebtoken::decode_header(assertion)
        .ok()
        .and_then(|h| h.kid)
        .is_some_and(|kid| {
            keys.keys
                .iter()
                .any(|k| k.common.key_id.as_deref() == Some(&kid))
        })
}

/// Verifies `assertion` for `client_id` at the token endpoint `token_url`; returns its `jti`
/// and `exp` for replay protection.
pub fn verify(
    assertion: &str,
    client_id: &str,
    token_url: &str,
    keys: &JwkSet,
    now: i64,
) -> Result<(String, i64), AssertionError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| AssertionError::Malformed)?;
    let alg = match header.alg {
        Algorithm::RS384 => "RS384",
        Algorithm::ES384 => "ES384",
        _ => return Err(AssertionError::Algorithm),
    };
    let kid = header.kid.ok_or(AssertionError::UnknownKey)?;
    let jwk = key_for(keys, &kid, alg).ok_or(AssertionError::UnknownKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| AssertionError::UnknownKey)?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECONDS;
    v.validate_nbf = true;
    v.set_audience(&[token_url]);
    v.set_issuer(&[client_id]);
    v.sub = Some(client_id.to_owned());
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data = jsonwebtoken::decode::<Claims>(assertion, &key, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => AssertionError::Expired,
            K::ImmatureSignature => AssertionError::NotYetValid,
            K::InvalidAudience => AssertionError::Audience,
            K::InvalidIssuer | K::InvalidSubject => AssertionError::Issuer,
            K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
                AssertionError::Signature
            }
            K::InvalidAlgorithm | K::InvalidAlgorithmName => AssertionError::Algorithm,
            _ => AssertionError::Malformed,
        }
    })?;
    let c = data.claims;
    if c.iss != client_id || c.sub != client_id {
        return Err(AssertionError::Issuer);
    }
    if c.exp > now + MAX_LIFETIME_SECONDS + LEEWAY_SECONDS as i64 {
        return Err(AssertionError::TooLong);
    }
    let jti = c
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(AssertionError::NoJti)?;
    Ok((jti, c.exp))
}

/// Parses and checks a client's registered JWKS: at least one key, every key with a `kid`.
pub fn parse_jwks(text: &str) -> Result<JwkSet, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS holds no key".into());
    }
    if set.keys.iter().any(|k| k.common.key_id.is_none()) {
        return Err("every key of the JWKS needs a kid".into());
    }
    if let Some(k) = set.keys.iter().find(|k| DecodingKey::from_jwk(k).is_err()) {
        return Err(format!(
            "the key {} is not an RSA or EC public key this server can use",
            k.common.key_id.as_deref().unwrap_or("")
        ));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const URL: &str = "http://vb.test/auth/token";

    fn rsa() -> (EncodingKey, JwkSet) {
        let pem = crate::auth::keys::SigningKey::generate_pem().expect("pem");
        let key = crate::auth::keys::SigningKey::from_pem(&pem).expect("key");
        let mut jwks = key.jwks();
        jwks["keys"][0]["kid"] = json!("k1");
        jwks["keys"][0]["alg"] = json!("RS384");
        (
            EncodingKey::from_rsa_pem(pem.as_bytes()).expect("enc"),
            serde_json::from_value(jwks).expect("jwks"),
        )
    }

    fn sign(enc: &EncodingKey, alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &claims, enc).expect("sign")
    }

    #[test]
    fn assertions_are_checked_claim_by_claim() {
        let (enc, keys) = rsa();
        let now = crate::store::now_micros() / 1_000_000;
        let good = json!({"iss": "c1", "sub": "c1", "aud": URL, "exp": now + 240, "jti": "j1"});
        let t = sign(&enc, Algorithm::RS384, "k1", good.clone());
        assert_eq!(claimed_client(&t).as_deref(), Some("c1"));
        assert_eq!(
            verify(&t, "c1", URL, &keys, now),
            Ok(("j1".into(), now + 240))
        );
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            sign(&enc, Algorithm::RS384, "k1", c)
        };
        let cases = [
            (
                with("aud", json!("http://other/token")),
                AssertionError::Audience,
            ),
            (with("iss", json!("c2")), AssertionError::Issuer),
            (with("sub", json!("c2")), AssertionError::Issuer),
            (with("exp", json!(now - 3600)), AssertionError::Expired),
            (with("exp", json!(now + 3600)), AssertionError::TooLong),
            (with("jti", json!(null)), AssertionError::NoJti),
            (
                sign(&enc, Algorithm::RS256, "k1", good.clone()),
                AssertionError::Algorithm,
            ),
            (
                sign(&enc, Algorithm::RS384, "k2", good.clone()),
                AssertionError::UnknownKey,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(
                verify(&token, "c1", URL, &keys, now),
                Err(want.clone()),
                "{want:?}"
            );
        }
        // Another key under the registered kid.
        let (other, _) = rsa();
        let forged = sign(&other, Algorithm::RS384, "k1", good.clone());
        assert_eq!(
            verify(&forged, "c1", URL, &keys, now),
            Err(AssertionError::Signature)
        );
        // HMAC keyed with the public key's bytes.
        let n = keys.keys[0].clone();
        let hs = sign(
            &EncodingKey::from_secret(serde_json::to_string(&n).expect("jwk").as_bytes()),
            Algorithm::HS256,
            "k1",
            good,
        );
        assert_eq!(
            verify(&hs, "c1", URL, &keys, now),
            Err(AssertionError::Algorithm)
        );
        assert_eq!(
            verify("x.y.z", "c1", URL, &keys, now),
            Err(AssertionError::Malformed)
        );
    }

    #[test]
    fn registered_key_sets_are_checked() {
        assert!(parse_jwks(r#"{"keys": []}"#).is_err());
        assert!(parse_jwks("not json").is_err());
        let (_, keys) = rsa();
        let mut v = serde_json::to_value(&keys).expect("json");
        assert!(parse_jwks(&v.to_string()).is_ok());
        v["keys"][0].as_object_mut().map(|k| k.remove("kid"));
        assert!(parse_jwks(&v.to_string()).is_err());
    }
}

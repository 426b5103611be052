//! Access tokens: RS256 JWTs in the shape of RFC 9068 (https://www.rfc-editor.org/rfc/rfc9068),
//! signed by the issuer's key and checked on every request without a database round trip.
//! They live at most five minutes (SMART Backend Services,
//! https://hl7.org/fhir/smart-app-launch/backend-services.html#issue-access-token).

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Role;
use super::keys::SigningKey;

/// Lifetime of an access token, in seconds.
pub const ACCESS_TOKEN_SECONDS: i64 = 300;

/// Clock difference tolerated when checking `exp` and `nbf` of our own tokens, in seconds.
const LEEWAY_SECONDS: u64 = 5;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    client_id: String,
    scope: String,
    /// The role and organization the token acts for (DESIGN.md "Tenancy").
    role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    /// The patient in context (SMART `launch/patient`), whose compartment `patient/` scopes
    /// open (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#launch-context-arrives-with-your-access_token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patient: Option<String>,
}

/// The caller of a request, from its verified access token.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub client_id: String,
    /// The user the token was issued to, or the client itself for a backend service.
    pub subject: String,
    pub role: Role,
    pub organization: Option<String>,
    pub scopes: Vec<String>,
    /// The patient in context: `patient/` scopes reach only this Patient's compartment.
    pub patient: Option<String>,
    /// Token id (`jti`), for audit.
    pub token_id: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
    /// The external OpenID provider that issued the token; `None` for this server's own.
    pub issuer: Option<String>,
}

/// What a token is issued for.
pub struct Grant<'a> {
    pub client_id: &'a str,
    pub subject: &'a str,
    pub role: Role,
    pub organization: Option<&'a str>,
    pub scope: &'a str,
    /// The patient in context, if any.
    pub patient: Option<&'a str>,
}

/// Signs an access token for `grant`, valid from `now` (seconds since the epoch) for
/// [`ACCESS_TOKEN_SECONDS`], for the FHIR base `audience`.
pub fn issue(
    key: &SigningKey,
    issuer: &str,
    audience: &str,
    grant: &Grant<'_>,
    now: i64,
) -> anyhow::Result<String> {
    let claims = AccessClaims {
        iss: issuer.to_owned(),
        sub: grant.subject.to_owned(),
        aud: audience.to_owned(),
        exp: now + ACCESS_TOKEN_SECONDS,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        client_id: grant.client_id.to_owned(),
        scope: grant.scope.to_owned(),
        role: grant.role,
        org: grant.organization.map(str::to_owned),
        patient: grant.patient.map(str::to_owned),
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    // RFC 9068 section 2.1: access tokens say what they are.
    header.typ = Some("at+jwt".into());
    Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
}

/// The claims of a JWT read without checking anything: only to pick the keys that will check it
/// (an assertion's client, a token's issuer), or to describe a token this server just signed.
pub fn unverified_claims<T: serde::de::DeserializeOwned>(jwt: &str) -> Option<T> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Why a bearer token was refused. The message goes to the client; it never quotes the token.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("the access token is malformed")]
    Malformed,
    #[error("the access token is signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the access token's signature or algorithm is not valid")]
    BadSignature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token was issued by another issuer")]
    WrongIssuer,
    #[error("the access token is for another audience")]
    WrongAudience,
    /// An external provider's keys cannot be fetched now (503, not the client's fault).
    #[error("the access token's issuer cannot be reached to check its keys")]
    Unavailable,
    /// An external provider's token whose claims name no usable role.
    #[error("the access token grants no vitalbridge role: {0}")]
    NoRole(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> TokenError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidIssuer => TokenError::WrongIssuer,
            K::InvalidAudience => TokenError::WrongAudience,
            K::InvalidSignature | K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                TokenError::BadSignature
            }
            _ => TokenError::Malformed,
        }
    }
}

/// Verifies `token` against our key, issuer and audience. Only RS256 with our `kid` is
/// accepted: `alg: none`, HMAC keyed with the public key and foreign keys all fail here.
pub fn verify(
    key: &SigningKey,
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<Principal, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != Algorithm::RS256 {
        return Err(TokenError::BadSignature);
    }
    if header.kid.as_deref() != Some(key.kid.as_str()) {
        return Err(TokenError::UnknownKey);
    }
    let mut v = Validation::new(Algorithm::RS256);
    v.leeway = LEEWAY_SECONDS;
    v.validate_nbf = true;
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &v)?;
    let c = data.claims;
    Ok(Principal {
        client_id: c.client_id,
        subject: c.sub,
        role: c.role,
        organization: c.org,
        scopes: c.scope.split_whitespace().map(str::to_owned).collect(),
        patient: c.patient,
        token_id: c.jti,
        expires_at: c.exp,
        issuer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

    fn key() -> SigningKey {
        SigningKey::from_pem(&SigningKey::generate_pem().expect("pem")).expect("key")
    }

    fn grant() -> Grant<'static> {
        Grant {
            client_id: "c1",
            subject: "c1",
            role: Role::Customer,
            organization: Some("org-1"),
            scope: "system/Observation.rs system/Patient.r",
            patient: Some("p-7"),
        }
    }

    fn now() -> i64 {
        crate::store::now_micros() / 1_000_000
    }

    const ISS: &str = "http://vb.test";
    const AUD: &str = "http://vb.test/fhir";

    #[test]
    fn issued_tokens_verify_and_carry_the_grant() {
        let k = key();
        let t = issue(&k, ISS, AUD, &grant(), now()).expect("issue");
        let p = verify(&k, ISS, AUD, &t).expect("valid");
        assert_eq!(p.client_id, "c1");
        assert_eq!(p.role, Role::Customer);
        assert_eq!(p.organization.as_deref(), Some("org-1"));
        assert_eq!(p.scopes, ["system/Observation.rs", "system/Patient.r"]);
        assert_eq!(p.patient.as_deref(), Some("p-7"));
        assert!(p.expires_at - now() <= ACCESS_TOKEN_SECONDS);
    }

    #[test]
    fn forged_and_stale_tokens_are_refused() {
        let k = key();
        let t = issue(&k, ISS, AUD, &grant(), now()).expect("issue");
        assert_eq!(
            verify(&k, ISS, "http://other/fhir", &t),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify(&k, "http://other", AUD, &t),
            Err(TokenError::WrongIssuer)
        );
        let old = issue(&k, ISS, AUD, &grant(), now() - 3600).expect("issue");
        assert_eq!(verify(&k, ISS, AUD, &old), Err(TokenError::Expired));
        let future = issue(&k, ISS, AUD, &grant(), now() + 120).expect("issue");
        assert_eq!(verify(&k, ISS, AUD, &future), Err(TokenError::NotYetValid));
        // Another key, even with our kid in the header.
        let other = key();
        let mut forged = issue(&other, ISS, AUD, &grant(), now()).expect("issue");
        let (h, rest) = forged.split_once('.').expect("jwt");
        let mut header: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(h).expect("b64")).expect("json");
        assert_eq!(verify(&k, ISS, AUD, &forged), Err(TokenError::UnknownKey));
        header["kid"] = serde_json::json!(k.kid);
        forged = format!("{}.{rest}", B64URL.encode(header.to_string()));
        assert_eq!(verify(&k, ISS, AUD, &forged), Err(TokenError::BadSignature));
        // A changed claim breaks the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[1]).expect("b64")).expect("json");
        claims["role"] = serde_json::json!("admin");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            verify(&k, ISS, AUD, &tampered),
            Err(TokenError::BadSignature)
        );
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            B64URL.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, k.kid)),
            parts[1]
        );
        assert!(verify(&k, ISS, AUD, &none).is_err());
        assert_eq!(
            verify(&k, ISS, AUD, "not.a.jwt"),
            Err(TokenError::Malformed)
        );
    }
}

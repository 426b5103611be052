//! The issuer's signing key: RSA 2048 for RS256, the algorithm SMART requires for id tokens
//! (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#scopes-for-requesting-identity-data)
//! and the one access tokens use too. Its public half is published as a JWKS
//! (https://www.rfc-editor.org/rfc/rfc7517) named by the OpenID configuration.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A signing key ready to sign and verify.
pub struct SigningKey {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public key as a JWK.
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A new random key as PKCS#8 PEM.
    pub fn generate_pem() -> anyhow::Result<String> {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
            .context("cannot generate an RSA key")?;
        Ok(key
            .to_pkcs8_pem(LineEnding::LF)
            .context("cannot encode the RSA key")?
            .to_string())
    }

    /// Loads a PKCS#8 PEM RSA private key.
    pub fn from_pem(pem: &str) -> anyhow::Result<SigningKey> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .context("the signing key is not a PKCS#8 PEM RSA private key")?;
        let der = key.to_pkcs1_der().context("cannot encode the RSA key")?;
        let n = B64URL.encode(key.n().to_bytes_be());
        let e = B64URL.encode(key.e().to_bytes_be());
        // https://www.rfc-editor.org/rfc/rfc7638#section-3.2: the required members, sorted, no
        // whitespace.
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = B64URL.encode(Sha256::digest(canonical.as_bytes()));
        let decoding =
            DecodingKey::from_rsa_components(&n, &e).context("cannot build the verifying key")?;
        Ok(SigningKey {
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e}),
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            decoding,
        })
    }

    /// The JWKS document of this key.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }
}

/// The deployment's signing key: the one given in the settings, else the one in the store,
/// generated and stored by the first process that starts.
pub async fn load(
    configured: Option<&str>,
    store: &crate::store::Store,
) -> anyhow::Result<SigningKey> {
    if let Some(pem) = configured {
        return SigningKey::from_pem(pem);
    }
    if let Some((_, pem)) = store.signing_key().await? {
        return SigningKey::from_pem(&pem);
    }
    let pem = tokio::task::spawn_blocking(SigningKey::generate_pem).await??;
    let key = SigningKey::from_pem(&pem)?;
    let (_, pem) = store.ensure_signing_key(&key.kid, &pem).await?;
    SigningKey::from_pem(&pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_with_a_stable_thumbprint() {
        let pem = SigningKey::generate_pem().expect("key");
        let a = SigningKey::from_pem(&pem).expect("load");
        let b = SigningKey::from_pem(&pem).expect("load");
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.kid.len(), 43, "base64url of a SHA-256");
        let jwks = a.jwks();
        assert_eq!(jwks["keys"][0]["kty"], "RSA");
        assert_eq!(jwks["keys"][0]["e"], "AQAB");
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
        assert!(SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nxx\n").is_err());
    }
}

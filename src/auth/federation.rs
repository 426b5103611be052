//! External OpenID providers (issue 4, item 3): a clinic's or distributor's own identity server
//! issues the access tokens its people and systems bring to the FHIR API.
//!
//! Each provider is configured by its issuer URL. Its metadata and keys come from OpenID
//! Connect Discovery (https://openid.net/specs/openid-connect-discovery-1_0.html) through the
//! openidconnect crate; its access tokens are JWTs in the shape of RFC 9068
//! (https://www.rfc-editor.org/rfc/rfc9068), checked here like our own: signature by a key of the
//! provider's JWKS, issuer, audience (this server's FHIR base, or what the provider calls it),
//! `exp`/`nbf` with the configured clock skew. The role, organization and patient come from
//! configurable claims; the token's scopes narrow the role as for our own tokens (SMART v2).
//!
//! Key rotation (https://openid.net/specs/openid-connect-core-1_0.html#RotateSigKeys): a token
//! signed with a `kid` we do not hold makes us fetch the JWKS again (at most every
//! [`REFETCH_MIN_SECONDS`]), and the set is fetched again anyway once older than
//! `jwks_max_age_seconds`, so retired keys stop being accepted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::{IssuerUrl, JsonWebKeySetUrl};
use serde::Deserialize;
use serde_json::Value;

use super::token::TokenError;
use super::{Principal, Role};

/// The least time between two JWKS fetches caused by unknown `kid`s, so that tokens with made-up
/// key ids cannot make us hammer the provider.
const REFETCH_MIN_SECONDS: u64 = 2;

/// One external provider, as configured (`VB_OIDC_PROVIDERS`, a JSON array of these).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The issuer URL: `https://…`, or `http://` on a loopback address only.
    pub issuer: String,
    /// The `aud` its access tokens must carry for this server (usually the FHIR base URL).
    pub audience: String,
    /// The claim naming the caller's role; a top-level claim, or a path of nested object keys
    /// separated by dots (`realm_access.roles`). Its value is a string or an array of strings.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Provider role names → vitalbridge roles (`admin`, `distributor`, `distributor-user`,
    /// `customer`, `customer-user`, `patient`). Without a map the claim must name them directly.
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    /// The claim naming the Organization (its resource id) the caller acts for.
    #[serde(default = "default_organization_claim")]
    pub organization_claim: String,
    /// The claim naming the Patient (its resource id) of a patient-facing app's user.
    #[serde(default = "default_patient_claim")]
    pub patient_claim: String,
    /// The vitalbridge roles this provider may grant. By default every role but `admin`: a
    /// clinic's identity server must not make platform admins unless it is told it may.
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// The Organizations (resource ids) this provider may speak for; without a list, any. A
    /// clinic's or distributor's own identity server should be limited to its organizations.
    #[serde(default)]
    pub organizations: Option<Vec<String>>,
    /// Scopes granted when a token carries no SMART scope (providers that know nothing of
    /// SMART); the role still bounds them.
    #[serde(default)]
    pub default_scope: Option<String>,
    /// Clock difference tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// How long a fetched JWKS is used before it is fetched again, in seconds.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
    /// When set, people sign in through this provider on the login page
    /// ([`super::federated_login`]) with this client of it.
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// vitalbridge as a client (relying party) of a provider, for the login page.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The button's label: "Sign in with {name}".
    pub name: String,
    pub client_id: String,
    /// Sent to the provider's token endpoint (HTTP Basic); never logged.
    pub client_secret: String,
    /// Scopes asked for: `openid` and those that release the role, organization and patient
    /// claims.
    #[serde(default = "default_login_scope")]
    pub scope: String,
}

impl std::fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginConfig")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("client_secret", &"…")
            .field("scope", &self.scope)
            .finish()
    }
}

fn default_login_scope() -> String {
    "openid profile".into()
}

fn default_role_claim() -> String {
    "vitalbridge_role".into()
}
fn default_roles() -> Vec<String> {
    [
        Role::Distributor,
        Role::DistributorUser,
        Role::Customer,
        Role::CustomerUser,
        Role::Patient,
    ]
    .iter()
    .map(|r| r.as_str().to_owned())
    .collect()
}
fn default_organization_claim() -> String {
    "vitalbridge_organization".into()
}
fn default_patient_claim() -> String {
    "patient".into()
}
fn default_clock_skew() -> u64 {
    60
}
fn default_jwks_max_age() -> u64 {
    300
}

/// Parses the provider list: the JSON itself when it starts with `[`, else the path of a file
/// holding it. Every entry is checked now, so a bad configuration stops the start.
pub fn parse_config(value: &str) -> anyhow::Result<Vec<ProviderConfig>> {
    let text = if value.trim_start().starts_with('[') {
        value.to_owned()
    } else {
        std::fs::read_to_string(value)
            .map_err(|e| anyhow::anyhow!("cannot read the OpenID provider list {value}: {e}"))?
    };
    let list: Vec<ProviderConfig> = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("the OpenID provider list is not valid: {e}"))?;
    for p in &list {
        check_config(p)?;
    }
    let mut issuers: Vec<&str> = list.iter().map(|p| p.issuer.as_str()).collect();
    issuers.sort_unstable();
    if issuers.windows(2).any(|w| w[0] == w[1]) {
        anyhow::bail!("an OpenID provider is configured twice");
    }
    Ok(list)
}

fn check_config(p: &ProviderConfig) -> anyhow::Result<()> {
    let url = url::Url::parse(&p.issuer)
        .map_err(|e| anyhow::anyhow!("issuer {:?} is not a URL: {e}", p.issuer))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    // Keys fetched over plain HTTP could be swapped on the way: only for a provider on this host.
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        anyhow::bail!(
            "issuer {} must use https (http only on a loopback address)",
            p.issuer
        );
    }
    if p.audience.trim().is_empty() {
        anyhow::bail!("issuer {}: the audience must not be empty", p.issuer);
    }
    for r in &p.roles {
        if Role::parse(r).is_none() {
            anyhow::bail!(
                "issuer {}: roles names {r:?}, which is not a vitalbridge role",
                p.issuer
            );
        }
    }
    for (theirs, ours) in &p.role_map {
        if Role::parse(ours).is_none() {
            anyhow::bail!(
                "issuer {}: role_map maps {theirs:?} to {ours:?}, which is not a vitalbridge role",
                p.issuer
            );
        }
    }
    if let Some(login) = &p.login {
        if login.name.trim().is_empty() || login.client_id.is_empty() {
            anyhow::bail!("issuer {}: login needs a name and a client_id", p.issuer);
        }
        if !login.scope.split_whitespace().any(|s| s == "openid") {
            anyhow::bail!("issuer {}: the login scope must include openid", p.issuer);
        }
    }
    Ok(())
}

/// The configured providers and what was fetched from them.
#[derive(Default)]
pub struct Federation {
    providers: Vec<Provider>,
    http: Option<reqwest::Client>,
}

struct Provider {
    config: ProviderConfig,
    keys: tokio::sync::Mutex<Keys>,
}

/// The provider's JWKS as decoding keys by `kid`, and when they were fetched.
#[derive(Default)]
struct Keys {
    jwks_uri: Option<JsonWebKeySetUrl>,
    by_kid: BTreeMap<String, (Algorithm, Arc<DecodingKey>)>,
    fetched: Option<Instant>,
    /// The last attempt, successful or not, to pace refetches.
    tried: Option<Instant>,
}

impl Federation {
    /// The providers, not contacted yet: discovery happens on the first token of each (and at
    /// start, by [`Federation::discover_all`]), so that a provider that is down does not stop
    /// the server.
    pub fn new(configs: Vec<ProviderConfig>) -> anyhow::Result<Federation> {
        let http = if configs.is_empty() {
            None
        } else {
            // No redirects: discovery and JWKS URLs are fetched exactly as configured and
            // advertised (the openidconnect crate's advice against SSRF).
            Some(
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(5))
                    .build()?,
            )
        };
        Ok(Federation {
            providers: configs
                .into_iter()
                .map(|config| Provider {
                    config,
                    keys: Default::default(),
                })
                .collect(),
            http,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// The configured provider of `issuer`, if any.
    pub fn knows(&self, issuer: &str) -> bool {
        self.provider(issuer).is_some()
    }

    fn provider(&self, issuer: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.config.issuer == issuer)
    }

    /// The providers people may sign in through on the login page: issuer and client.
    pub fn login_providers(&self) -> impl Iterator<Item = (&str, &LoginConfig)> {
        self.providers
            .iter()
            .filter_map(|p| Some((p.config.issuer.as_str(), p.config.login.as_ref()?)))
    }

    /// The login client of provider `issuer`.
    pub fn login_of(&self, issuer: &str) -> Option<&LoginConfig> {
        self.provider(issuer)?.config.login.as_ref()
    }

    /// The HTTP client for the providers (no redirects, short timeouts).
    pub fn http(&self) -> Option<&reqwest::Client> {
        self.http.as_ref()
    }

    /// The person that signed in through provider `issuer`, from the verified claims of the ID
    /// token and userinfo: role, organization and patient by the same configured claims and
    /// allow-lists as the provider's access tokens.
    pub fn login_principal(&self, issuer: &str, claims: &Value) -> Result<Principal, String> {
        let p = self
            .provider(issuer)
            .ok_or_else(|| "unknown provider".to_owned())?;
        principal_of(&p.config, claims, "").map_err(|e| match e {
            TokenError::NoRole(why) => why,
            other => other.to_string(),
        })
    }

    /// The audience configured for `issuer`.
    pub fn audience(&self, issuer: &str) -> Option<&str> {
        self.provider(issuer).map(|p| p.config.audience.as_str())
    }

    /// Discovers every provider once, logging those that cannot be reached.
    pub async fn discover_all(&self) {
        for p in &self.providers {
            let mut keys = p.keys.lock().await;
            if let Err(e) = self.refresh(p, &mut keys).await {
                tracing::warn!(issuer = %p.config.issuer, error = %e, "OpenID provider not reachable yet");
            }
        }
    }

    /// Fetches the provider's metadata (first time) and JWKS.
    async fn refresh(&self, p: &Provider, keys: &mut Keys) -> anyhow::Result<()> {
        let Some(http) = &self.http else {
            anyhow::bail!("no HTTP client");
        };
        keys.tried = Some(Instant::now());
        let set: CoreJsonWebKeySet = match &keys.jwks_uri {
            Some(uri) => CoreJsonWebKeySet::fetch_async(uri, http).await?,
            None => {
                let meta = CoreProviderMetadata::discover_async(
                    IssuerUrl::new(p.config.issuer.clone())?,
                    http,
                )
                .await?;
                keys.jwks_uri = Some(meta.jwks_uri().clone());
                meta.jwks().clone()
            }
        };
        keys.by_kid = decoding_keys(&set);
        keys.fetched = Some(Instant::now());
        tracing::info!(issuer = %p.config.issuer, keys = keys.by_kid.len(), "fetched an OpenID provider's keys");
        Ok(())
    }

    /// Verifies an access token of the configured provider `issuer` (already read, unverified,
    /// from the token: it only picks the provider, whose keys then decide).
    pub async fn verify(&self, issuer: &str, token: &str) -> Result<Principal, TokenError> {
        let p = self.provider(issuer).ok_or(TokenError::Malformed)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.clone().unwrap_or_default();
        let key = {
            let mut keys = p.keys.lock().await;
            let max_age = Duration::from_secs(p.config.jwks_max_age_seconds);
            let stale = keys.fetched.is_none_or(|t| t.elapsed() >= max_age);
            let may_retry = keys
                .tried
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(REFETCH_MIN_SECONDS));
            let unknown = !keys.by_kid.contains_key(&kid);
            if (stale || unknown) && may_retry {
                if let Err(e) = self.refresh(p, &mut keys).await {
                    tracing::warn!(issuer = %p.config.issuer, error = %e, "cannot fetch an OpenID provider's keys");
                    // Keys fetched before keep serving while the provider is down.
                    if keys.fetched.is_none() {
                        return Err(TokenError::Unavailable);
                    }
                }
            } else if keys.fetched.is_none() {
                return Err(TokenError::Unavailable);
            }
            keys.by_kid.get(&kid).cloned()
        };
        let (alg, key) = key.ok_or(TokenError::UnknownKey)?;
        check_token(&p.config, alg, &key, &header, token, now())
    }
}

fn now() -> i64 {
    crate::store::now_micros() / 1_000_000
}

/// The asymmetric signature algorithms accepted from a provider: never `none`, never HMAC
/// (whose key would be the public key everyone has).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The signing keys of a JWKS with the algorithm each one is for: its `alg`, or RS256 for an RSA
/// key without one (the OpenID Connect default). Keys for encryption and of unknown types are
/// left out.
fn decoding_keys(set: &CoreJsonWebKeySet) -> BTreeMap<String, (Algorithm, Arc<DecodingKey>)> {
    let mut out = BTreeMap::new();
    for k in set.keys() {
        let Ok(json) = serde_json::to_value(k) else {
            continue;
        };
        if json
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(json.clone()) else {
            continue;
        };
        let alg = match json.get("alg").and_then(Value::as_str) {
            Some(a) => match a.parse::<Algorithm>() {
                Ok(a) if ASYMMETRIC.contains(&a) => a,
                _ => continue,
            },
            None if json.get("kty").and_then(Value::as_str) == Some("RSA") => Algorithm::RS256,
            None => match json.get("crv").and_then(Value::as_str) {
                Some("P-256") => Algorithm::ES256,
                Some("P-384") => Algorithm::ES384,
                Some("Ed25519") => Algorithm::EdDSA,
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let kid = json
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        out.insert(kid, (alg, Arc::new(key)));
    }
    out
}

/// Checks a token's signature and claims against one key of the provider and reads the caller.
fn check_token(
    config: &ProviderConfig,
    alg: Algorithm,
    key: &DecodingKey,
    header: &jsonwebtoken::Header,
    token: &str,
    now: i64,
) -> Result<Principal, TokenError> {
    // The header's algorithm must be the key's: a token cannot pick a weaker one.
    if header.alg != alg {
        return Err(TokenError::BadSignature);
    }
    let mut v = Validation::new(alg);
    v.leeway = config.clock_skew_seconds;
    v.validate_nbf = true;
    v.set_issuer(&[config.issuer.as_str()]);
    v.set_audience(&[config.audience.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(token, key, &v)?.claims;
    // An ID token is not an access token (RFC 9068 section 4): a `nonce` or `at_hash` marks one,
    // whatever audience the provider gave it.
    if claims.get("nonce").is_some() || claims.get("at_hash").is_some() {
        return Err(TokenError::Malformed);
    }
    // A token issued in the future is as suspicious as one not valid yet.
    if claims
        .get("iat")
        .and_then(Value::as_i64)
        .is_some_and(|iat| iat > now + config.clock_skew_seconds as i64)
    {
        return Err(TokenError::NotYetValid);
    }
    principal_of(config, &claims, token)
}

/// A claim by its name, or by a path of nested keys separated by dots.
fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(claims, |v, key| v.get(key))
}

fn claim_str<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claim(claims, name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The caller of a verified token: its role from the role claim (through the role map), its
/// organization and patient, its scopes.
fn principal_of(
    config: &ProviderConfig,
    claims: &Value,
    token: &str,
) -> Result<Principal, TokenError> {
    let names: Vec<&str> = match claim(claims, &config.role_claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let mut roles: Vec<Role> = names
        .iter()
        .filter_map(|n| {
            if config.role_map.is_empty() {
                Role::parse(n)
            } else {
                config.role_map.get(*n).and_then(|r| Role::parse(r))
            }
        })
        .collect();
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    let role = match roles.as_slice() {
        [r] => *r,
        [] => {
            return Err(TokenError::NoRole(format!(
                "claim {} names none",
                config.role_claim
            )));
        }
        _ => {
            return Err(TokenError::NoRole(format!(
                "claim {} names several; a token acts in one role",
                config.role_claim
            )));
        }
    };
    if !config.roles.iter().any(|r| r == role.as_str()) {
        return Err(TokenError::NoRole(format!(
            "this provider may not grant role {role}"
        )));
    }
    let organization = claim_str(claims, &config.organization_claim).map(str::to_owned);
    if let (Some(allowed), Some(org)) = (&config.organizations, &organization)
        && !allowed.iter().any(|a| a == org)
    {
        return Err(TokenError::NoRole(format!(
            "this provider may not speak for organization {org}"
        )));
    }
    let patient = claim_str(claims, &config.patient_claim).map(str::to_owned);
    // The same rules as for our own clients: who belongs to an organization, who to a patient.
    match (role, &organization, &patient) {
        (Role::Admin, None, _) => {}
        (Role::Admin, Some(_), _) => {
            return Err(TokenError::NoRole(
                "an admin belongs to no organization".into(),
            ));
        }
        (Role::Patient, _, None) => {
            return Err(TokenError::NoRole(format!(
                "a patient needs claim {}",
                config.patient_claim
            )));
        }
        (Role::Patient, _, Some(_)) => {}
        (_, None, _) => {
            return Err(TokenError::NoRole(format!(
                "role {role} needs claim {}",
                config.organization_claim
            )));
        }
        _ => {}
    }
    let mut scopes: Vec<String> = match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => vec![],
    };
    if !scopes.iter().any(|s| s.contains('/'))
        && let Some(d) = &config.default_scope
    {
        scopes.extend(d.split_whitespace().map(str::to_owned));
    }
    let subject = claim_str(claims, "sub").unwrap_or_default().to_owned();
    let client_id = claim_str(claims, "client_id")
        .or_else(|| claim_str(claims, "azp"))
        .unwrap_or(&subject)
        .to_owned();
    let token_id = claim_str(claims, "jti")
        .map(str::to_owned)
        .unwrap_or_else(|| super::routes::token_hash(token));
    Ok(Principal {
        client_id,
        subject,
        role,
        organization,
        scopes,
        patient: (role == Role::Patient).then_some(patient).flatten(),
        token_id,
        expires_at: claims.get("exp").and_then(Value::as_i64).unwrap_or(0),
        issuer: Some(config.issuer.clone()),
    })
}

/// The `iss` of a JWT, read without checking anything: it only says which keys to check with.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    super::token::unverified_claims::<Iss>(token)?.iss
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISS: &str = "https://idp.example";
    const AUD: &str = "https://vb.example/fhir";

    fn config() -> ProviderConfig {
        serde_json::from_value(json!({
            "issuer": ISS, "audience": AUD,
            "role_claim": "realm_access.roles",
            "role_map": {"clinic-admin": "customer", "clinic-staff": "customer-user"},
            "organization_claim": "https://vitalbridge/org",
            "organizations": ["org-1", "org-2"],
            "default_scope": "system/*.rs",
            "clock_skew_seconds": 30
        }))
        .expect("config")
    }

    /// An ES384 key pair (quick to make), as a provider would publish it.
    fn keys() -> (EncodingKey, DecodingKey) {
        use p384::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let public = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        (
            EncodingKey::from_ec_pem(pem.as_bytes()).expect("enc"),
            DecodingKey::from_ec_pem(public.as_bytes()).expect("dec"),
        )
    }

    fn sign(enc: &EncodingKey, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES384);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, claims, enc).expect("sign")
    }

    fn claims(now: i64) -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": "nurse-7", "azp": "portal",
            "iat": now, "exp": now + 300, "jti": "j1",
            "realm_access": {"roles": ["offline_access", "clinic-staff"]},
            "https://vitalbridge/org": "org-1",
            "scope": "openid profile"
        })
    }

    fn check(dec: &DecodingKey, token: &str, now: i64) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token).expect("header");
        check_token(&config(), Algorithm::ES384, dec, &header, token, now)
    }

    #[test]
    fn roles_organizations_and_scopes_come_from_the_configured_claims() {
        let (enc, dec) = keys();
        let t = now();
        let p = check(&dec, &sign(&enc, &claims(t)), t).expect("valid");
        assert_eq!(p.role, Role::CustomerUser);
        assert_eq!(p.organization.as_deref(), Some("org-1"));
        assert_eq!(p.subject, "nurse-7");
        assert_eq!(p.client_id, "portal");
        // No SMART scope in the token: the configured default applies.
        assert_eq!(p.scopes, ["openid", "profile", "system/*.rs"]);
        assert_eq!(p.issuer.as_deref(), Some(ISS));
        assert_eq!(
            unverified_issuer(&sign(&enc, &claims(t))).as_deref(),
            Some(ISS)
        );

        let mut two = claims(t);
        two["realm_access"]["roles"] = json!(["clinic-admin", "clinic-staff"]);
        assert!(matches!(
            check(&dec, &sign(&enc, &two), t),
            Err(TokenError::NoRole(_))
        ));
        let mut none = claims(t);
        none["realm_access"]["roles"] = json!(["customer"]);
        assert!(matches!(
            check(&dec, &sign(&enc, &none), t),
            Err(TokenError::NoRole(_))
        ));
        let mut foreign = claims(t);
        foreign["https://vitalbridge/org"] = json!("org-9");
        assert!(matches!(
            check(&dec, &sign(&enc, &foreign), t),
            Err(TokenError::NoRole(_))
        ));
        // An admin needs the provider to be allowed to make admins.
        let mut admin = claims(t);
        admin["realm_access"]["roles"] = json!(["admin"]);
        admin
            .as_object_mut()
            .expect("object")
            .remove("https://vitalbridge/org");
        let mut c = config();
        c.role_map.clear();
        let h = jsonwebtoken::decode_header(sign(&enc, &admin)).expect("header");
        let refused = check_token(&c, Algorithm::ES384, &dec, &h, &sign(&enc, &admin), t);
        assert!(matches!(refused, Err(TokenError::NoRole(_))), "{refused:?}");
        c.roles.push("admin".into());
        let granted = check_token(&c, Algorithm::ES384, &dec, &h, &sign(&enc, &admin), t);
        assert_eq!(granted.map(|p| p.role), Ok(Role::Admin));
        // An ID token of the same provider.
        let mut id_token = claims(t);
        id_token["nonce"] = json!("n-1");
        assert_eq!(
            check(&dec, &sign(&enc, &id_token), t).map(|_| ()),
            Err(TokenError::Malformed)
        );
        let mut orgless = claims(t);
        orgless
            .as_object_mut()
            .expect("object")
            .remove("https://vitalbridge/org");
        assert!(matches!(
            check(&dec, &sign(&enc, &orgless), t),
            Err(TokenError::NoRole(_))
        ));
    }

    #[test]
    fn clock_skew_audience_and_signature_are_enforced() {
        let (enc, dec) = keys();
        let t = now();
        // 20 s past expiry is inside the 30 s skew; 40 s is not.
        assert!(check(&dec, &sign(&enc, &claims(t - 320)), t).is_ok());
        assert_eq!(
            check(&dec, &sign(&enc, &claims(t - 340)), t).map(|_| ()),
            Err(TokenError::Expired)
        );
        let mut early = claims(t);
        early["nbf"] = json!(t + 120);
        assert_eq!(
            check(&dec, &sign(&enc, &early), t).map(|_| ()),
            Err(TokenError::NotYetValid)
        );
        let mut issued_later = claims(t);
        issued_later["iat"] = json!(t + 120);
        assert_eq!(
            check(&dec, &sign(&enc, &issued_later), t).map(|_| ()),
            Err(TokenError::NotYetValid)
        );
        let mut other = claims(t);
        other["aud"] = json!("https://elsewhere.example/fhir");
        assert_eq!(
            check(&dec, &sign(&enc, &other), t).map(|_| ()),
            Err(TokenError::WrongAudience)
        );
        let (enc2, _) = keys();
        assert_eq!(
            check(&dec, &sign(&enc2, &claims(t)), t).map(|_| ()),
            Err(TokenError::BadSignature)
        );
        // HS256 keyed with anything: the algorithm is not the key's.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(t),
            &EncodingKey::from_secret(b"public key bytes"),
        )
        .expect("sign");
        assert_eq!(
            check(&dec, &hs, t).map(|_| ()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn bad_configurations_stop_the_start() {
        let ok = r#"[{"issuer":"https://idp.example","audience":"https://vb/fhir"}]"#;
        assert_eq!(
            parse_config(ok).expect("ok")[0].role_claim,
            "vitalbridge_role"
        );
        for bad in [
            r#"[{"issuer":"http://idp.example","audience":"a"}]"#,
            r#"[{"issuer":"https://idp.example","audience":""}]"#,
            r#"[{"issuer":"https://idp.example","audience":"a","role_map":{"x":"root"}}]"#,
            r#"[{"issuer":"https://idp.example","audience":"a","audiance":"b"}]"#,
            r#"[{"issuer":"https://i","audience":"a"},{"issuer":"https://i","audience":"b"}]"#,
        ] {
            assert!(parse_config(bad).is_err(), "{bad}");
        }
        assert!(parse_config(r#"[{"issuer":"http://127.0.0.1:9","audience":"a"}]"#).is_ok());
    }
}

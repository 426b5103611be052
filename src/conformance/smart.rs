//! SMART discovery and Backend Services: the `.well-known/smart-configuration` document
//! (https://hl7.org/fhir/smart-app-launch/conformance.html), the CapabilityStatement's
//! `oauth-uris`, and a client_credentials token with a client secret sent by HTTP Basic
//! (https://hl7.org/fhir/smart-app-launch/client-confidential-symmetric.html, RFC 6749
//! section 4.4), then what the server does with no token or a forged one.

use reqwest::Method;
use serde_json::Value;

use super::client::Resp;
use super::runner::{Check, Group, Problem, ensure, fail};
use super::{Context, string};

const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

pub async fn run(cx: &Context, g: &mut Group<'_>) {
    g.check(
        "smart-configuration has the fields SMART App Launch 2 requires",
        configuration(cx),
    )
    .await;
    g.check(
        "the CapabilityStatement declares SMART-on-FHIR and its token endpoint",
        capability_security(cx),
    )
    .await;
    g.check(
        "client_credentials with HTTP Basic yields a bearer token",
        backend_token(cx),
    )
    .await;
    g.check("a wrong client secret is refused", wrong_secret(cx))
        .await;
    g.check(
        "a request without a token is refused with 401",
        unauthenticated(cx, None),
    )
    .await;
    g.check(
        "a request with a forged token is refused with 401",
        unauthenticated(cx, Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")),
    )
    .await;
}

/// `rest.security` of the CapabilityStatement.
fn security(cx: &Context) -> Option<&Value> {
    cx.caps.security()
}

/// The endpoint `name` (`token`, `authorize`) of the `oauth-uris` extension.
fn oauth_uri(cx: &Context, name: &str) -> Option<String> {
    security(cx)?["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == OAUTH_URIS)?["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == name)?["valueUri"]
        .as_str()
        .map(str::to_owned)
}

/// Whether the server says it is protected by SMART at all.
fn offers_smart(cx: &Context) -> bool {
    cx.smart_configuration().is_some() || oauth_uri(cx, "token").is_some()
}

fn no_smart() -> Problem {
    Problem::Skip(
        "the server offers no SMART configuration and no oauth-uris in its CapabilityStatement"
            .into(),
    )
}

/// The token endpoint: the SMART configuration's, else the CapabilityStatement's.
pub fn token_endpoint(cx: &Context) -> Option<String> {
    cx.smart_configuration()
        .and_then(|c| c["token_endpoint"].as_str().map(str::to_owned))
        .or_else(|| oauth_uri(cx, "token"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// https://hl7.org/fhir/smart-app-launch/conformance.html#metadata: `token_endpoint`,
/// `capabilities`, `grant_types_supported` and `code_challenge_methods_supported` (S256, never
/// `plain`) are required; `authorization_endpoint` with a launch capability; `issuer` and
/// `jwks_uri` with `sso-openid-connect`.
async fn configuration(cx: &Context) -> Check {
    let r = cx.smart.clone()?;
    if r.status == 404 && oauth_uri(cx, "token").is_none() {
        return Err(no_smart());
    }
    r.expect(&[200])?;
    let c = r.json()?;
    ensure!(c.is_object(), "expected a JSON object; {}", r.describe());
    string(&c["token_endpoint"], "token_endpoint")?;
    let capabilities = strings(&c["capabilities"]);
    ensure!(
        c["capabilities"].is_array(),
        "expected capabilities (an array), got {}",
        c["capabilities"]
    );
    let grants = strings(&c["grant_types_supported"]);
    ensure!(
        !grants.is_empty(),
        "expected grant_types_supported, got {}",
        c["grant_types_supported"]
    );
    let pkce = strings(&c["code_challenge_methods_supported"]);
    ensure!(
        pkce.contains(&"S256") && !pkce.contains(&"plain"),
        "expected code_challenge_methods_supported with S256 and without plain, got {}",
        c["code_challenge_methods_supported"]
    );
    if capabilities
        .iter()
        .any(|c| *c == "launch-ehr" || *c == "launch-standalone")
    {
        string(
            &c["authorization_endpoint"],
            "authorization_endpoint (the server lists a launch capability)",
        )?;
    }
    if capabilities.contains(&"sso-openid-connect") {
        string(&c["issuer"], "issuer (the server lists sso-openid-connect)")?;
        string(
            &c["jwks_uri"],
            "jwks_uri (the server lists sso-openid-connect)",
        )?;
    }
    if capabilities.contains(&"client-confidential-symmetric") {
        let methods = strings(&c["token_endpoint_auth_methods_supported"]);
        ensure!(
            methods.is_empty() || methods.contains(&"client_secret_basic"),
            "client-confidential-symmetric is listed but token_endpoint_auth_methods_supported {methods:?} lacks client_secret_basic"
        );
    }
    Ok(())
}

/// https://hl7.org/fhir/smart-app-launch/conformance.html#declaring-support-for-oauth2-endpoints:
/// the `SMART-on-FHIR` security service and the token endpoint in `oauth-uris` (deprecated but
/// still read by clients), the same as the SMART configuration's.
async fn capability_security(cx: &Context) -> Check {
    if !offers_smart(cx) {
        return Err(no_smart());
    }
    let s =
        security(cx).ok_or_else(|| fail("expected rest.security in the CapabilityStatement"))?;
    let services: Vec<&str> = s["service"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .filter_map(|x| x["code"].as_str())
        .collect();
    ensure!(
        services.contains(&"SMART-on-FHIR"),
        "expected rest.security.service SMART-on-FHIR, got {}",
        s["service"]
    );
    let token = oauth_uri(cx, "token").ok_or_else(|| {
        fail(format!(
            "expected the oauth-uris extension with a token endpoint, got {s}"
        ))
    })?;
    if let Some(c) = cx.smart_configuration() {
        ensure!(
            c["token_endpoint"] == token.as_str(),
            "the CapabilityStatement's token endpoint {token} differs from the SMART configuration's {}",
            c["token_endpoint"]
        );
    }
    Ok(())
}

/// The client's credentials, or a skip.
fn credentials(cx: &Context) -> Result<(&str, &str), Problem> {
    match (&cx.args.client_id, &cx.args.client_secret) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(Problem::Skip(
            "no --client-id and --client-secret given".into(),
        )),
    }
}

/// POSTs grant_type=client_credentials to the token endpoint with HTTP Basic authentication:
/// RFC 6749 section 2.3.1 form-urlencodes the id and secret first.
async fn token_request(cx: &Context, id: &str, secret: &str) -> Result<Resp, Problem> {
    let endpoint = token_endpoint(cx).ok_or_else(|| {
        fail("no token endpoint: neither a SMART configuration nor oauth-uris names one")
    })?;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut form = vec![("grant_type", "client_credentials".to_owned())];
    if let Some(scope) = &cx.args.scope {
        form.push(("scope", scope.clone()));
    }
    let req = cx
        .fhir
        .http
        .request(Method::POST, &endpoint)
        .basic_auth(encode(id), Some(encode(secret)))
        .header("accept", "application/json")
        .form(&form);
    cx.fhir.send(req).await
}

/// Gets a token with client_credentials and checks the answer (RFC 6749 section 5.1: bearer
/// type, `expires_in`, `Cache-Control: no-store`; SMART Backend Services: `scope`).
pub async fn client_credentials(cx: &Context, id: &str, secret: &str) -> Result<String, Problem> {
    let r = token_request(cx, id, secret).await?;
    r.expect(&[200])?;
    let t = r.json()?;
    let token = string(&t["access_token"], "access_token")?.to_owned();
    ensure!(
        t["token_type"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer")),
        "expected token_type Bearer, got {}",
        t["token_type"]
    );
    ensure!(
        t["expires_in"].as_u64().is_some_and(|s| s > 0),
        "expected expires_in (seconds, a positive number), got {}",
        t["expires_in"]
    );
    ensure!(
        t["scope"].is_string(),
        "expected scope (SMART Backend Services requires it in the answer), got {}",
        t["scope"]
    );
    let cache = r.header("cache-control").unwrap_or_default();
    ensure!(
        cache.to_ascii_lowercase().contains("no-store"),
        "expected Cache-Control: no-store on the token response, got {cache:?}"
    );
    Ok(token)
}

async fn backend_token(cx: &Context) -> Check {
    let (id, secret) = credentials(cx)?;
    let token = client_credentials(cx, id, secret).await?;
    // The token works: a search with it is answered.
    let r = cx
        .fhir
        .send(
            cx.fhir
                .http
                .get(cx.fhir.url("Patient?_count=1"))
                .bearer_auth(&token)
                .header("accept", super::client::FHIR_JSON),
        )
        .await?;
    r.resource(&[200], "Bundle")?;
    Ok(())
}

/// RFC 6749 section 5.2: a client that fails to authenticate gets 401 (or 400) `invalid_client`.
async fn wrong_secret(cx: &Context) -> Check {
    let (id, secret) = credentials(cx)?;
    let wrong = format!("{secret}-wrong");
    let r = token_request(cx, id, &wrong).await?;
    r.expect(&[400, 401])?;
    let body = r.json()?;
    ensure!(
        body["error"] == "invalid_client",
        "expected error invalid_client, got {}",
        body["error"]
    );
    Ok(())
}

/// RFC 6750 section 3: a protected resource asked without a valid token answers 401 with a
/// `WWW-Authenticate: Bearer` challenge.
async fn unauthenticated(cx: &Context, token: Option<&str>) -> Check {
    if !offers_smart(cx) {
        return Err(no_smart());
    }
    let mut req = cx
        .fhir
        .http
        .get(cx.fhir.url("Patient?_count=1"))
        .header("accept", super::client::FHIR_JSON);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = cx.fhir.send(req).await?;
    r.expect(&[401])?;
    let challenge = r.header("www-authenticate").unwrap_or_default();
    ensure!(
        challenge.to_ascii_lowercase().starts_with("bearer"),
        "expected a WWW-Authenticate: Bearer challenge with the 401, got {challenge:?}"
    );
    Ok(())
}

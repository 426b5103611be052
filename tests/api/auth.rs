//! The authorization server and the bearer-token gate (issue 4): discovery documents, the token
//! endpoint with client credentials, and tokens that must be refused (forged, expired, for
//! another issuer or audience, unsigned, HMAC-signed with the public key).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::both;
use crate::common::{ADMIN_ID, ADMIN_SECRET, Backend, TestApp, patient, test_settings};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

async fn token_request(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/auth/token", app.origin()))
        .form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(
            url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>(),
            Some(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()),
        );
    }
    let r = req.send().await.expect("token request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body: Value = r.json().await.expect("OAuth responses are JSON");
    (status, headers, body)
}

/// A request to `path` under the FHIR base with `token` (or none), by a client without the
/// admin's default header.
async fn get_with(app: &TestApp, path: &str, token: Option<&str>) -> crate::common::Resp {
    let mut req = reqwest::Client::new().get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    app.send(req).await
}

async fn discovery_is_public_and_names_the_endpoints(app: TestApp) {
    let plain = reqwest::Client::new();
    let origin = app.origin();
    // JSON whatever the Accept header asks (SMART App Launch 2, conformance.html).
    let r = app
        .send(
            plain
                .get(app.url(".well-known/smart-configuration"))
                .header("accept", "text/html"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json")
    );
    let smart = r.json();
    assert_eq!(smart["token_endpoint"], format!("{origin}/auth/token"));
    assert_eq!(smart["issuer"], origin);
    assert_eq!(smart["jwks_uri"], format!("{origin}/auth/jwks"));
    assert!(
        smart["grant_types_supported"]
            .as_array()
            .expect("grants")
            .contains(&json!("client_credentials"))
    );
    assert_eq!(smart["code_challenge_methods_supported"], json!(["S256"]));
    assert!(
        smart["capabilities"]
            .as_array()
            .expect("capabilities")
            .contains(&json!("permission-v2"))
    );

    let oidc = app
        .send(plain.get(format!("{origin}/.well-known/openid-configuration")))
        .await;
    assert_eq!(oidc.status, 200);
    let oidc = oidc.json();
    assert_eq!(oidc["issuer"], origin);
    assert_eq!(oidc["token_endpoint"], smart["token_endpoint"]);

    let jwks = app
        .send(plain.get(format!("{origin}/auth/jwks")))
        .await
        .json();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert!(
        key.get("d").is_none() && key.get("p").is_none(),
        "no private part: {key}"
    );

    // Metadata and liveness need no token either; the CapabilityStatement names the service.
    let cs = app.send(plain.get(app.url("metadata"))).await;
    assert_eq!(cs.status, 200);
    let security = &cs.json()["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let oauth = &security["extension"][0];
    assert_eq!(
        oauth["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(oauth["extension"][0]["url"], "token");
    assert_eq!(oauth["extension"][0]["valueUri"], smart["token_endpoint"]);
    assert_eq!(
        app.send(plain.get(format!("{origin}/healthz")))
            .await
            .status,
        200
    );
}
both!(discovery_is_public_and_names_the_endpoints);

async fn every_fhir_interaction_needs_a_token(app: TestApp) {
    let id = app.create(&patient("Gatekeeper")).await;
    let plain = reqwest::Client::new();
    let body = patient("Intruder").to_string();
    for (what, req) in [
        ("read", plain.get(app.url(&format!("Patient/{id}")))),
        ("search", plain.get(app.url("Patient?name=Gatekeeper"))),
        (
            "history",
            plain.get(app.url(&format!("Patient/{id}/_history"))),
        ),
        ("system history", plain.get(app.url("_history"))),
        (
            "create",
            plain
                .post(app.url("Patient"))
                .header("content-type", "application/fhir+json")
                .body(body.clone()),
        ),
        (
            "update",
            plain
                .put(app.url(&format!("Patient/{id}")))
                .header("content-type", "application/fhir+json")
                .body(body.clone()),
        ),
        ("delete", plain.delete(app.url(&format!("Patient/{id}")))),
        (
            "transaction",
            plain
                .post(format!("{}/", app.base))
                .header("content-type", "application/fhir+json")
                .body(
                    json!({"resourceType": "Bundle", "type": "transaction", "entry": []})
                        .to_string(),
                ),
        ),
        ("$lastn", plain.get(app.url("Observation/$lastn?patient=x"))),
        (
            "$everything",
            plain.get(app.url(&format!("Patient/{id}/$everything"))),
        ),
        (
            "_search",
            plain
                .post(app.url("Patient/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("name=Gatekeeper"),
        ),
        (
            "wrong scheme",
            plain
                .get(app.url(&format!("Patient/{id}")))
                .basic_auth(ADMIN_ID, Some(ADMIN_SECRET)),
        ),
        // Only the named OAuth endpoints are public, not everything under /auth/.
        (
            "other /auth/ path",
            plain.get(format!("{}/auth/clients", app.origin())),
        ),
    ] {
        let r = app.send(req).await;
        assert_eq!(r.status, 401, "{what} without a token: {}", r.text);
        assert!(
            r.header("www-authenticate")
                .unwrap_or_default()
                .starts_with("Bearer"),
            "{what}: {:?}",
            r.headers
        );
        let issues = r.outcome_issues();
        assert_eq!(issues[0]["code"], "login", "{what}");
        // Nothing of the resource leaks into the refusal.
        assert!(!r.text.contains("Gatekeeper"), "{what}: {}", r.text);
    }
    // The resource is untouched, and the admin's token still works.
    let r = app.get(&format!("Patient/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["meta"]["versionId"], "1");
}
both!(every_fhir_interaction_needs_a_token);

async fn client_credentials_grant(app: TestApp) {
    // HTTP Basic (the id and secret are form-urlencoded first: the secret has spaces and `&`).
    let (status, headers, body) = token_request(
        &app,
        &[("grant_type", "client_credentials")],
        Some((ADMIN_ID, ADMIN_SECRET)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(body["token_type"], "Bearer");
    let expires_in = body["expires_in"].as_i64().expect("expires_in");
    assert!((1..=300).contains(&expires_in), "{body}");
    assert_eq!(body["scope"], "system/*.cruds");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh for client credentials"
    );
    let token = body["access_token"].as_str().expect("token");
    let claims: Value = serde_json::from_slice(
        &B64URL
            .decode(token.split('.').nth(1).expect("jwt"))
            .expect("b64"),
    )
    .expect("claims");
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        300
    );
    assert_eq!(claims["aud"], app.base);
    assert_eq!(claims["iss"], app.origin());
    assert_eq!(get_with(&app, "Patient", Some(token)).await.status, 200);

    // Credentials sent without the form-encoding step still decode whole: a raw `&` or space
    // is part of the secret, not the end of it.
    let raw =
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_ID}:{ADMIN_SECRET}"));
    let r = reqwest::Client::new()
        .post(format!("{}/auth/token", app.origin()))
        .header("authorization", format!("Basic {raw}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 200);
    let cut = base64::engine::general_purpose::STANDARD
        .encode(format!("{ADMIN_ID}:test-admin-secret: with spaces "));
    let r = reqwest::Client::new()
        .post(format!("{}/auth/token", app.origin()))
        .header("authorization", format!("Basic {cut}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 401, "a secret cut at `&` is another secret");

    // client_secret_post, with a narrower scope.
    let (status, _, body) = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", ADMIN_ID),
            ("client_secret", ADMIN_SECRET),
            ("scope", "system/Observation.rs system/Patient.read"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "system/Observation.rs system/Patient.read");

    // Refusals, each with its RFC 6749 error code.
    // (what, form, HTTP Basic credentials, status, error)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            vec![("grant_type", "client_credentials")],
            Some((ADMIN_ID, "wrong")),
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            vec![("grant_type", "client_credentials")],
            Some(("nobody", ADMIN_SECRET)),
            401,
            "invalid_client",
        ),
        (
            "no authentication",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", ADMIN_ID),
            ],
            None,
            401,
            "invalid_client",
        ),
        (
            "two methods",
            vec![
                ("grant_type", "client_credentials"),
                ("client_secret", ADMIN_SECRET),
            ],
            Some((ADMIN_ID, ADMIN_SECRET)),
            400,
            "invalid_request",
        ),
        (
            "no grant type",
            vec![],
            Some((ADMIN_ID, ADMIN_SECRET)),
            400,
            "invalid_request",
        ),
        (
            "password grant",
            vec![
                ("grant_type", "password"),
                ("username", "a"),
                ("password", "b"),
            ],
            Some((ADMIN_ID, ADMIN_SECRET)),
            400,
            "unsupported_grant_type",
        ),
        (
            "scope escalation",
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "user/*.cruds"),
            ],
            Some((ADMIN_ID, ADMIN_SECRET)),
            400,
            "invalid_scope",
        ),
        (
            "identity scope",
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "system/Patient.r openid"),
            ],
            Some((ADMIN_ID, ADMIN_SECRET)),
            400,
            "invalid_scope",
        ),
    ];
    for (what, form, basic, want_status, want_error) in cases {
        let (status, headers, body) = token_request(&app, &form, basic).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error)),
            "{what}: {body}"
        );
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        assert!(body.get("access_token").is_none(), "{what}");
        if want_status == 401 && basic.is_some() {
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap_or_default()
                    .starts_with("Basic"),
                "{what}"
            );
        }
    }
}
both!(client_credentials_grant);

/// Tokens minted outside the token endpoint. The test knows the server's signing key
/// (`test_settings`), so it can sign tokens that are valid in every way but one.
async fn forged_and_stale_tokens_are_refused(app: TestApp) {
    let pem = crate::common::test_signing_key();
    let key = vitalbridge::auth::keys::SigningKey::from_pem(&pem).expect("key");
    let claims = |iat: i64| {
        json!({"iss": app.origin(), "sub": ADMIN_ID, "aud": app.base, "iat": iat, "nbf": iat,
               "exp": iat + 300, "jti": uuid::Uuid::new_v4().to_string(), "client_id": ADMIN_ID,
               "scope": "system/*.cruds", "role": "admin"})
    };
    let sign = |header: Header, c: &Value, k: &EncodingKey| {
        jsonwebtoken::encode(&header, c, k).expect("sign")
    };
    let rs256 = || {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(key.kid.clone());
        h
    };
    let ours = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("our key");
    // Control: a token made this way is accepted.
    let good = sign(rs256(), &claims(now()), &ours);
    assert_eq!(get_with(&app, "Patient", Some(&good)).await.status, 200);
    // Verified tokens are remembered, but only for the issuer and audience they were checked
    // for: the same token sent to this server under another name is for another audience.
    let elsewhere = app
        .send(
            reqwest::Client::new()
                .get(app.url("Patient"))
                .bearer_auth(&good)
                .header("host", "fhir.other.example"),
        )
        .await;
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.text);
    assert_eq!(get_with(&app, "Patient", Some(&good)).await.status, 200);

    let with = |k: &str, v: Value| {
        let mut c = claims(now());
        c[k] = v;
        c
    };
    let other_pem = vitalbridge::auth::keys::SigningKey::generate_pem().expect("pem");
    let other = EncodingKey::from_rsa_pem(other_pem.as_bytes()).expect("other key");
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("not-our-key".into());
    // HS256 keyed with our public key: the classic algorithm-confusion attack.
    let public_pem = {
        use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
        rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
            .expect("parse")
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .expect("public pem")
    };
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(key.kid.clone());
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut c = claims(now());
        c["scope"] = json!("system/*.cruds user/*.cruds");
        parts[1] = B64URL.encode(c.to_string());
        parts.join(".")
    };
    let unsigned = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none", "typ": "JWT", "kid": key.kid}).to_string()),
        B64URL.encode(claims(now()).to_string())
    );
    let cases = [
        (
            "wrong issuer",
            sign(rs256(), &with("iss", json!("http://evil.example")), &ours),
        ),
        (
            "wrong audience",
            sign(
                rs256(),
                &with("aud", json!("http://evil.example/fhir")),
                &ours,
            ),
        ),
        ("expired", sign(rs256(), &claims(now() - 3600), &ours)),
        ("not yet valid", sign(rs256(), &claims(now() + 600), &ours)),
        (
            "signed by another key",
            sign(rs256(), &claims(now()), &other),
        ),
        ("unknown kid", sign(unknown_kid, &claims(now()), &other)),
        (
            "HS256 with the public key",
            sign(
                hs,
                &claims(now()),
                &EncodingKey::from_secret(public_pem.as_bytes()),
            ),
        ),
        ("tampered claims", tampered),
        ("alg none", unsigned),
        ("garbage", "abc.def.ghi".to_owned()),
    ];
    for (what, token) in cases {
        let r = get_with(&app, "Patient", Some(&token)).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        assert_eq!(r.outcome_issues()[0]["code"], "login", "{what}");
    }
}
both!(forged_and_stale_tokens_are_refused);

/// Without a configured key the first start generates one and keeps it in the database, so a
/// restarted server (or a second process) accepts the tokens issued before. A changed bootstrap
/// secret replaces the old one.
async fn key_and_bootstrap_client_survive_restarts(backend: Backend) {
    let db = crate::common::fresh_database(backend).await;
    let start = |secret: &'static str| {
        let db = db.clone();
        async move {
            let mut s = test_settings(&db);
            s.signing_key_pem = None;
            s.bootstrap_client.as_mut().expect("bootstrap").secret = secret.into();
            let app = vitalbridge::Application::build(s).await.expect("builds");
            let addr = app.local_addr().expect("addr");
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(app.run_until(async {
                let _ = stop_rx.await;
            }));
            (format!("http://{addr}"), stop_tx, handle)
        }
    };
    let (origin, stop, handle) = start("first-secret").await;
    let jwks = |origin: String| async move {
        reqwest::get(format!("{origin}/auth/jwks"))
            .await
            .expect("jwks")
            .json::<Value>()
            .await
            .expect("json")
    };
    let first_jwks = jwks(origin.clone()).await;
    let token = |origin: String, secret: &'static str| async move {
        reqwest::Client::new()
            .post(format!("{origin}/auth/token"))
            .basic_auth(ADMIN_ID, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token")
            .status()
            .as_u16()
    };
    assert_eq!(token(origin.clone(), "first-secret").await, 200);
    let _ = stop.send(());
    handle.await.expect("join").expect("served");

    let (origin, stop, handle) = start("second-secret").await;
    assert_eq!(
        jwks(origin.clone()).await["keys"][0]["kid"],
        first_jwks["keys"][0]["kid"]
    );
    assert_eq!(token(origin.clone(), "first-secret").await, 401);
    assert_eq!(token(origin.clone(), "second-secret").await, 200);
    let _ = stop.send(());
    handle.await.expect("join").expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_bootstrap_client_survive_restarts_postgres() {
    key_and_bootstrap_client_survive_restarts(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_bootstrap_client_survive_restarts_sqlite() {
    key_and_bootstrap_client_survive_restarts(Backend::Sqlite).await
}

/// A token obtained for narrower scopes than its client's does only what those scopes allow
/// (SMART scopes never widen; 403 with `insufficient_scope` otherwise), in single interactions,
/// searches, operations and per Bundle entry.
async fn narrowed_tokens_do_only_what_their_scopes_allow(app: TestApp) {
    let pid = app.create(&patient("Scoped")).await;
    let oid = app.create(&crate::common::heart_rate(&pid, 61.0)).await;
    let token = |scope: &'static str| {
        let app = &app;
        async move {
            let (status, _, body) = token_request(
                app,
                &[("grant_type", "client_credentials"), ("scope", scope)],
                Some((ADMIN_ID, ADMIN_SECRET)),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().expect("token").to_owned()
        }
    };
    let narrow = token("system/Patient.rs system/Observation.r").await;
    let plain = reqwest::Client::new();
    let send = |req: reqwest::RequestBuilder| app.send(req.bearer_auth(&narrow));
    let json_body = |v: Value| v.to_string();
    let cases = vec![
        (
            "read Patient",
            plain.get(app.url(&format!("Patient/{pid}"))),
            200,
        ),
        (
            "search Patient",
            plain.get(app.url("Patient?name=Scoped")),
            200,
        ),
        (
            "system search of Patient",
            plain.get(format!("{}?_type=Patient", app.base)),
            200,
        ),
        (
            "read Observation",
            plain.get(app.url(&format!("Observation/{oid}"))),
            200,
        ),
        (
            "vread Observation",
            plain.get(app.url(&format!("Observation/{oid}/_history/1"))),
            200,
        ),
        (
            "search Observation (no s)",
            plain.get(app.url("Observation?code=8867-4")),
            403,
        ),
        (
            "$lastn",
            plain.get(app.url(&format!("Observation/$lastn?patient={pid}"))),
            403,
        ),
        ("read Device", plain.get(app.url("Device/any")), 403),
        (
            "create Patient",
            plain
                .post(app.url("Patient"))
                .header("content-type", "application/fhir+json")
                .body(json_body(patient("Nope"))),
            403,
        ),
        (
            "update Patient",
            plain
                .put(app.url(&format!("Patient/{pid}")))
                .header("content-type", "application/fhir+json")
                .body(json_body(crate::common::with(
                    patient("Nope"),
                    "id",
                    json!(pid),
                ))),
            403,
        ),
        (
            "delete Patient",
            plain.delete(app.url(&format!("Patient/{pid}"))),
            403,
        ),
        (
            "system search of every type it may search",
            plain.get(format!("{}?_id={pid}", app.base)),
            200,
        ),
        ("system history", plain.get(app.url("_history")), 403),
        (
            "Patient history (type)",
            plain.get(app.url("Patient/_history")),
            200,
        ),
        (
            "include of a readable type",
            plain.get(app.url("Patient?name=Scoped&_revinclude=Observation:subject")),
            200,
        ),
        (
            "include of a type it may not read",
            plain.get(app.url("Patient?name=Scoped&_revinclude=Device:patient")),
            403,
        ),
        (
            "$everything of a type it may not search",
            plain.get(app.url(&format!("Patient/{pid}/$everything?_type=Observation"))),
            403,
        ),
        (
            "$everything",
            plain.get(app.url(&format!("Patient/{pid}/$everything"))),
            200,
        ),
    ];
    for (what, req, want) in cases {
        let r = send(req).await;
        assert_eq!(r.status, want, "{what}: {}", r.text);
        if want == 403 {
            assert_eq!(r.outcome_issues()[0]["code"], "forbidden", "{what}");
            assert!(
                r.header("www-authenticate")
                    .unwrap_or_default()
                    .contains("insufficient_scope"),
                "{what}"
            );
        }
    }

    // Bundles are checked per entry: a batch answers each entry, a transaction refuses all.
    let bundle = |kind: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
            {"request": {"method": "POST", "url": "Patient"}, "resource": patient("ViaBundle")}
        ]})
    };
    let r = send(
        plain
            .post(format!("{}/", app.base))
            .header("content-type", "application/fhir+json")
            .body(json_body(bundle("batch"))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let statuses: Vec<String> = r.json()["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        statuses[0].starts_with("200") && statuses[1].starts_with("403"),
        "{statuses:?}"
    );
    let r = send(
        plain
            .post(format!("{}/", app.base))
            .header("content-type", "application/fhir+json")
            .body(json_body(bundle("transaction"))),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.outcome_issues()[0]["code"], "forbidden");
    // Nothing was written by the refused requests.
    let names = app.get("Patient?name=Nope,ViaBundle").await.json();
    assert_eq!(names["total"], 0, "{names}");
    let current = app.get(&format!("Patient/{pid}")).await;
    assert_eq!(current.json()["meta"]["versionId"], "1");

    // Interactions that answer with stored resources need read as well: a conditional create
    // (it returns the existing match), a patch (it returns, and can probe, the resource) and a
    // Bundle search that includes other types.
    let writer = token("system/Patient.cu system/Patient.s").await;
    let r = app
        .send(
            plain
                .post(app.url("Patient"))
                .bearer_auth(&writer)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "name=Scoped")
                .body(json_body(patient("Probe"))),
        )
        .await;
    assert_eq!(r.status, 403, "conditional create without read: {}", r.text);
    assert!(!r.text.contains(&pid), "{}", r.text);
    let r = app
        .send(
            plain
                .patch(app.url(&format!("Patient/{pid}")))
                .bearer_auth(&writer)
                .header("content-type", "application/json-patch+json")
                .body("[]"),
        )
        .await;
    assert_eq!(r.status, 403, "patch without read: {}", r.text);
    let searcher = token("system/Patient.rs system/Observation.rs").await;
    let included = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?name=Scoped&_revinclude=Device:patient"}}
    ]});
    let r = app
        .send(
            plain
                .post(format!("{}/", app.base))
                .bearer_auth(&searcher)
                .header("content-type", "application/fhir+json")
                .body(json_body(included)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let status = r.json()["entry"][0]["response"]["status"].clone();
    assert!(
        status.as_str().unwrap_or_default().starts_with("403"),
        "{status}"
    );

    // Granular scopes narrow the search (tests/api/granular_scopes.rs has the details).
    let granular = token("system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory").await;
    let r = get_with(&app, "Observation?code=8867-4", Some(&granular)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json()["entry"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.text
    );
    let all = app.get("Observation?code=8867-4").await;
    assert!(
        all.json()["entry"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        all.text
    );
}
both!(narrowed_tokens_do_only_what_their_scopes_allow);

/// `vitalbridge client add|list|remove`: an operator registers a client, the secret is printed
/// once and works at the token endpoint, never appears in the listing, and stops working once
/// the client is removed.
async fn client_cli(backend: Backend) {
    let db = crate::common::fresh_database(backend).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .arg("client")
            .args(args)
            .args(["--database-url", &db])
            .output()
            .expect("runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = cli(&[
        "add",
        "ehr-1",
        "--scope",
        "system/Patient.rs",
        "--name",
        "Clinic EHR",
    ]);
    assert!(ok, "{stderr}");
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .expect("the secret is printed")
        .to_owned();
    assert!(secret.len() >= 40, "{secret}");
    let (ok, listing, _) = cli(&["list"]);
    assert!(ok);
    assert!(
        listing.contains("ehr-1\tadmin\t\tsystem/Patient.rs\tClinic EHR"),
        "{listing}"
    );
    let (ok, _, stderr) = cli(&[
        "add",
        "clinic-1",
        "--role",
        "customer",
        "--organization",
        "org-1",
    ]);
    assert!(ok, "{stderr}");
    let (_, listing, _) = cli(&["list"]);
    assert!(
        listing.contains("clinic-1\tcustomer\torg-1\tsystem/*.cruds"),
        "{listing}"
    );
    assert!(!listing.contains(&secret));
    for (args, why) in [
        (vec!["add", "ehr-1"], "exists already"),
        (
            vec!["add", "ehr-2", "--scope", "user/*.cruds"],
            "not a system scope",
        ),
        (vec!["add", "bad id"], "without spaces"),
        (
            vec!["add", "clinic-2", "--role", "customer"],
            "need the organization",
        ),
        (
            vec!["add", "clinic-2", "--role", "admin", "--organization", "o"],
            "belong to no organization",
        ),
        (vec!["add", "clinic-2", "--role", "owner"], "unknown role"),
        (vec!["remove", "nobody"], "no client"),
    ] {
        let (ok, _, stderr) = cli(&args);
        assert!(!ok, "{args:?}");
        assert!(
            stderr.starts_with("error:") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }

    let app = vitalbridge::Application::build(test_settings(&db))
        .await
        .expect("builds");
    let origin = format!("http://{}", app.local_addr().expect("addr"));
    tokio::spawn(app.run_until(std::future::pending()));
    let token = |secret: String| {
        let origin = origin.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{origin}/auth/token"))
                .basic_auth("ehr-1", Some(secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .expect("token");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let (status, body) = token(secret.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "system/Patient.rs");
    let (ok, _, stderr) = cli(&["remove", "ehr-1"]);
    assert!(ok, "{stderr}");
    let (status, body) = token(secret).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cli_postgres() {
    client_cli(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cli_sqlite() {
    client_cli(Backend::Sqlite).await
}

//! SMART App Launch 2 through the built-in authorization server, the way an app does it: the
//! login page, the patient picker, the authorization code with PKCE S256, the token exchange,
//! `id_token`, refresh tokens, and the patient compartment the tokens then reach.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::both;
use crate::common::{TestApp, heart_rate, patient, with};

pub(crate) const REDIRECT: &str = "http://app.test/callback";
const PASSWORD: &str = "correct horse battery";

pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub(crate) fn challenge(verifier: &str) -> String {
    B64URL.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// The authorization request of `scope`, PKCE-protected by `verifier`.
pub(crate) fn auth_params(
    app: &TestApp,
    client_id: &str,
    scope: &str,
    verifier: &str,
) -> Vec<(String, String)> {
    [
        ("response_type", "code".to_owned()),
        ("client_id", client_id.to_owned()),
        ("redirect_uri", REDIRECT.to_owned()),
        ("scope", scope.to_owned()),
        ("state", "st-42".to_owned()),
        ("aud", app.base.clone()),
        ("code_challenge", challenge(verifier)),
        ("code_challenge_method", "S256".to_owned()),
        ("nonce", "n-7".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Posts the login form (or the picker's answer) and returns status, Location and page.
async fn post_form(app: &TestApp, form: &[(String, String)]) -> (u16, Option<String>, String) {
    in_browser(
        browser()
            .post(format!("{}/auth/authorize", app.origin()))
            .form(form),
    )
    .await
}

/// Opens the authorization endpoint with `params`: status, Location and page.
async fn get_authorize(
    app: &TestApp,
    params: &[(String, String)],
) -> (u16, Option<String>, String) {
    in_browser(
        browser()
            .get(format!("{}/auth/authorize", app.origin()))
            .query(params),
    )
    .await
}

/// Status, Location and body of a request that does not follow redirects.
async fn in_browser(req: reqwest::RequestBuilder) -> (u16, Option<String>, String) {
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    (status, location, r.text().await.unwrap_or_default())
}

fn with_fields(base: &[(String, String)], more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = base.to_vec();
    v.extend(more.iter().map(|(k, x)| ((*k).to_owned(), (*x).to_owned())));
    v
}

/// `name` of the redirect's query.
pub(crate) fn query_param(location: &str, name: &str) -> Option<String> {
    url::Url::parse(location)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Signs in through the login page and returns the authorization code.
async fn code_for(app: &TestApp, params: &[(String, String)], user: &str) -> String {
    let (status, location, page) = post_form(
        app,
        &with_fields(params, &[("username", user), ("password", PASSWORD)]),
    )
    .await;
    assert_eq!(status, 303, "{page}");
    let location = location.expect("redirect");
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-42"));
    query_param(&location, "code").expect("code")
}

async fn token_request(app: &TestApp, form: &[(&str, &str)]) -> crate::common::Resp {
    token_request_at(app, "token", form).await
}

/// A form POST to `/auth/{endpoint}`.
async fn token_request_at(
    app: &TestApp,
    endpoint: &str,
    form: &[(&str, &str)],
) -> crate::common::Resp {
    app.send(
        reqwest::Client::new()
            .post(format!("{}/auth/{endpoint}", app.origin()))
            .form(form),
    )
    .await
}

pub(crate) async fn exchange(
    app: &TestApp,
    client_id: &str,
    code: &str,
    verifier: &str,
) -> crate::common::Resp {
    token_request(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> crate::common::Resp {
    app.send(reqwest::Client::new().get(app.url(path)).bearer_auth(token))
        .await
}

fn observation_subjects(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    e["resource"]["subject"]["reference"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

async fn smart_app_launch(app: TestApp) {
    for org in ["c1", "c2"] {
        crate::common::put_organization(&app, org, None).await;
    }
    let in_org = |family: &str, org: &str| {
        with(
            patient(family),
            "managingOrganization",
            json!({"reference": format!("Organization/{org}")}),
        )
    };
    let p1 = app.create(&in_org("One", "c1")).await;
    let p2 = app.create(&in_org("Two", "c1")).await;
    let p3 = app.create(&in_org("Three", "c2")).await;
    for p in [&p1, &p2, &p3] {
        app.create(&heart_rate(p, 60.0)).await;
    }

    // A public app and two users, registered by the admin.
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/clients", app.origin()))
                .json(&json!({
                    "role": "patient", "public": true, "name": "Vitals app",
                    "redirect_uris": [REDIRECT],
                    "scope": "patient/*.rs openid fhirUser launch launch/patient offline_access"
                })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        r.json().get("client_secret").is_none(),
        "a public app has no secret"
    );
    let client_id = r.json()["client_id"].as_str().expect("id").to_owned();
    for (name, role, fhir_user) in [
        ("pat1", "patient", format!("Patient/{p1}")),
        ("doc1", "customer-user", "Practitioner/doc1".to_owned()),
        ("doc2", "customer-user", "Practitioner/doc2".to_owned()),
    ] {
        let r = app
            .send(
                app.client
                    .post(format!("{}/auth/users", app.origin()))
                    .json(&json!({
                        "username": name, "password": PASSWORD, "role": role,
                        "organization": "c1", "fhirUser": fhir_user
                    })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert!(
            !r.text.contains(PASSWORD) && !r.text.contains("argon2"),
            "{}",
            r.text
        );
    }
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/users", app.origin()))
                .json(&json!({
                    "username": "weak", "password": "short", "role": "admin"
                })),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // The login page.
    let verifier = "v".repeat(20) + "-patient-verifier-0123456789";
    let scope = "patient/*.rs openid fhirUser launch/patient offline_access";
    let params = auth_params(&app, &client_id, scope, &verifier);
    let r = browser()
        .get(format!("{}/auth/authorize", app.origin()))
        .query(&params)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    // No other site may frame the login page (clickjacking).
    assert_eq!(
        r.headers()
            .get("x-frame-options")
            .and_then(|v| v.to_str().ok()),
        Some("DENY")
    );
    let page = r.text().await.expect("page");
    assert!(
        page.contains("name=\"password\"") && page.contains("Vitals app"),
        "{page}"
    );

    // A wrong password, then the right one.
    let (status, location, page) = post_form(
        &app,
        &with_fields(
            &params,
            &[("username", "pat1"), ("password", "not the password")],
        ),
    )
    .await;
    assert_eq!((status, location), (401, None));
    assert!(page.contains("wrong username or password"), "{page}");
    let code = code_for(&app, &params, "pat1").await;

    // A verifier that does not match burns the code.
    let r = exchange(&app, &client_id, &code, &("w".repeat(43))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(r.json()["error"], "invalid_grant", "a code works once");

    let code = code_for(&app, &params, "pat1").await;
    let r = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    let tokens = r.json();
    assert_eq!(tokens["patient"], json!(p1));
    assert_eq!(tokens["scope"], scope);
    let id_token = tokens["id_token"].as_str().expect("id_token");
    let claims: Value = serde_json::from_slice(
        &B64URL
            .decode(id_token.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(claims["sub"], "pat1");
    assert_eq!(claims["aud"], json!(client_id));
    assert_eq!(claims["nonce"], "n-7");
    assert_eq!(
        claims["fhirUser"],
        json!(format!("{}/Patient/{p1}", app.base))
    );
    // The id_token verifies with the published keys.
    let jwks: jsonwebtoken::jwk::JwkSet = reqwest::get(format!("{}/auth/jwks", app.origin()))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[client_id.as_str()]);
    v.set_issuer(&[app.origin()]);
    jsonwebtoken::decode::<Value>(id_token, &key, &v).expect("id_token verifies");

    // The token reaches the patient's own compartment only.
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    let r = get_as(&app, &access, "Observation").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        observation_subjects(&r.json()),
        vec![format!("Patient/{p1}")]
    );
    assert_eq!(
        get_as(&app, &access, &format!("Patient/{p1}")).await.status,
        200
    );
    assert_eq!(
        get_as(&app, &access, &format!("Patient/{p2}")).await.status,
        404
    );
    let r = get_as(&app, &access, "Patient").await;
    assert_eq!(
        r.json()["entry"].as_array().map_or(0, Vec::len),
        1,
        "{}",
        r.text
    );
    let r = app
        .send(
            reqwest::Client::new()
                .post(app.url("Observation"))
                .bearer_auth(&access)
                .header("content-type", "application/fhir+json")
                .body(heart_rate(&p1, 70.0).to_string()),
        )
        .await;
    assert_eq!(r.status, 403, "read-only scopes: {}", r.text);

    // Refresh: rotation, single use, no widening.
    let refresh = tokens["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let use_refresh = |t: String| {
        let (app, client_id) = (&app, &client_id);
        async move {
            token_request(
                app,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &t),
                    ("client_id", client_id),
                ],
            )
            .await
        }
    };
    let r = use_refresh(refresh.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["patient"], json!(p1));
    let rotated = r.json()["refresh_token"]
        .as_str()
        .expect("new refresh")
        .to_owned();
    assert_ne!(rotated, refresh);
    let r = use_refresh(refresh.clone()).await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "a used refresh token: {}",
        r.text
    );
    let r = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rotated),
            ("client_id", &client_id),
            ("scope", "patient/*.cruds"),
        ],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_scope", "{}", r.text);

    // A refused widening leaves the refresh token usable; introspection and revocation.
    let introspect = |t: String| {
        let (app, client_id) = (&app, &client_id);
        async move {
            let r = token_request_at(
                app,
                "introspect",
                &[("token", &t), ("client_id", client_id)],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.header("cache-control"), Some("no-store"));
            r.json()
        }
    };
    let live = introspect(rotated.clone()).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["sub"], "pat1");
    let live = introspect(access.clone()).await;
    assert_eq!(
        (live["active"].clone(), live["patient"].clone()),
        (json!(true), json!(p1))
    );
    assert_eq!(
        introspect("not-a-token".into()).await,
        json!({"active": false})
    );
    let r = token_request_at(&app, "introspect", &[("token", &rotated)]).await;
    assert_eq!(r.status, 401, "no client authentication: {}", r.text);
    let r = token_request_at(
        &app,
        "revoke",
        &[("token", &access), ("client_id", &client_id)],
    )
    .await;
    assert_eq!(r.json()["error"], "unsupported_token_type", "{}", r.text);
    let r = token_request_at(
        &app,
        "revoke",
        &[("token", "unknown"), ("client_id", &client_id)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = token_request_at(
        &app,
        "revoke",
        &[("token", &rotated), ("client_id", &client_id)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(introspect(rotated.clone()).await, json!({"active": false}));
    let r = use_refresh(rotated.clone()).await;
    assert_eq!(r.json()["error"], "invalid_grant", "revoked: {}", r.text);

    // Requests that cannot be trusted are refused on a page, never redirected.
    let mut bad = params.clone();
    bad[2].1 = "http://evil.test/callback".into();
    let (status, location, _) = get_authorize(&app, &bad).await;
    assert_eq!((status, location), (400, None));
    // Without PKCE: back to the app with an error.
    let no_pkce: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .cloned()
        .collect();
    let (status, location, _) = get_authorize(&app, &no_pkce).await;
    assert_eq!(status, 303);
    assert_eq!(
        query_param(&location.expect("loc"), "error").as_deref(),
        Some("invalid_request")
    );
    // Scopes the app was not registered for.
    let wide = auth_params(&app, &client_id, "user/*.cruds", &verifier);
    let (status, location, _) = get_authorize(&app, &wide).await;
    assert_eq!(status, 303);
    assert_eq!(
        query_param(&location.expect("loc"), "error").as_deref(),
        Some("invalid_scope")
    );

    // A clinician picks one of their clinic's patients.
    let scope = "launch/patient patient/Observation.rs openid fhirUser";
    let params = auth_params(&app, &client_id, scope, &verifier);
    let (status, _, page) = post_form(
        &app,
        &with_fields(&params, &[("username", "doc1"), ("password", PASSWORD)]),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains(&format!("value=\"{p1}\"")) && page.contains(&format!("value=\"{p2}\"")),
        "{page}"
    );
    assert!(
        !page.contains(&format!("value=\"{p3}\"")),
        "another clinic's patient: {page}"
    );
    let sign_in = page
        .split("name=\"sign_in\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("sign_in")
        .to_owned();
    let (status, location, page) = post_form(
        &app,
        &with_fields(&params, &[("sign_in", &sign_in), ("patient", &p3)]),
    )
    .await;
    assert_eq!((status, location), (403, None), "{page}");
    let (status, location, page) = post_form(
        &app,
        &with_fields(
            &params,
            &[("sign_in", "forged.token.value"), ("patient", &p2)],
        ),
    )
    .await;
    assert_eq!((status, location), (401, None), "{page}");
    let (status, location, page) = post_form(
        &app,
        &with_fields(&params, &[("sign_in", &sign_in), ("patient", &p2)]),
    )
    .await;
    assert_eq!(status, 303, "{page}");
    let code = query_param(&location.expect("loc"), "code").expect("code");
    let r = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["patient"], json!(p2));
    assert!(
        r.json().get("refresh_token").is_none(),
        "no offline_access asked"
    );
    let access = r.json()["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let r = get_as(&app, &access, "Observation").await;
    assert_eq!(
        observation_subjects(&r.json()),
        vec![format!("Patient/{p2}")]
    );

    // EHR launch: the EHR asks for a launch value; the app brings it back with `launch`.
    let launch_for = |patient: String| {
        let app = &app;
        async move {
            let r = app
                .send(
                    app.client
                        .post(format!("{}/auth/launch", app.origin()))
                        .json(&json!({ "patient": patient })),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()["launch"].as_str().expect("launch").to_owned()
        }
    };
    let ehr = auth_params(&app, &client_id, "launch patient/Observation.rs", &verifier);
    let launch = launch_for(p2.clone()).await;
    let (status, location, page) = post_form(
        &app,
        &with_fields(
            &ehr,
            &[
                ("launch", &launch),
                ("username", "doc1"),
                ("password", PASSWORD),
            ],
        ),
    )
    .await;
    assert_eq!(status, 303, "no picker in an EHR launch: {page}");
    let code = query_param(&location.expect("loc"), "code").expect("code");
    let r = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(r.json()["patient"], json!(p2), "{}", r.text);
    let other_clinic = launch_for(p3.clone()).await;
    // One signature character changed (not the last, whose low bits may be padding).
    let at = launch.len() - 10;
    let swap = if &launch[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{swap}{}", &launch[..at], &launch[at + 1..]);
    for bad in [other_clinic.as_str(), tampered.as_str()] {
        let (status, location, _) = post_form(
            &app,
            &with_fields(
                &ehr,
                &[
                    ("launch", bad),
                    ("username", "doc1"),
                    ("password", PASSWORD),
                ],
            ),
        )
        .await;
        assert_eq!((status, location), (403, None));
    }
    let (status, location, _) = get_authorize(&app, &ehr).await;
    assert_eq!(status, 303, "the launch scope without a launch value");
    assert_eq!(
        query_param(&location.expect("loc"), "error").as_deref(),
        Some("invalid_request")
    );
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/launch", app.origin()))
                .json(&json!({"patient": "no-such-patient"})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Brute force: the account locks, and then even the right password is refused.
    for _ in 0..5 {
        let (status, _, _) = post_form(
            &app,
            &with_fields(
                &params,
                &[("username", "doc2"), ("password", "guess guess guess")],
            ),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, location, page) = post_form(
        &app,
        &with_fields(&params, &[("username", "doc2"), ("password", PASSWORD)]),
    )
    .await;
    assert_eq!((status, location), (401, None));
    // The same page as for a name that does not exist: a lockout does not tell that the
    // account exists.
    let (_, _, unknown) = post_form(
        &app,
        &with_fields(
            &params,
            &[("username", "nobody-at-all"), ("password", PASSWORD)],
        ),
    )
    .await;
    assert_eq!(page, unknown);
    assert!(page.contains("locked after repeated failures"), "{page}");
    let r = app
        .send(app.client.get(format!("{}/auth/users", app.origin())))
        .await;
    let users = r.json()["users"].clone();
    let doc2 = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "doc2"))
        .expect("doc2");
    assert_eq!(doc2["locked"], true);
}
both!(smart_app_launch);

/// `vitalbridge user add|list|unlock|remove`: the password is read from the environment or
/// stdin, never an argument, and never shown again.
async fn user_cli(backend: crate::common::Backend) {
    use std::io::Write as _;
    let db = crate::common::fresh_database(backend).await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .arg("user")
            .args(args)
            .args(["--database-url", &db])
            .env_remove("VB_USER_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("written");
        }
        let out = child.wait_with_output().expect("exits");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let add = [
        "add",
        "nurse1",
        "--role",
        "customer-user",
        "--organization",
        "c1",
        "--fhir-user",
        "Practitioner/n1",
    ];
    let (ok, _, stderr) = cli(&add, Some(&format!("{PASSWORD}\n")));
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&add, Some(&format!("{PASSWORD}\n")));
    assert!(!ok && stderr.contains("exists already"), "{stderr}");
    let (ok, _, stderr) = cli(
        &["add", "p9", "--role", "patient", "--organization", "c1"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(!ok && stderr.contains("fhirUser Patient/"), "{stderr}");
    let (ok, _, stderr) = cli(&["add", "short", "--role", "admin"], Some("abc\n"));
    assert!(!ok && stderr.contains("at least"), "{stderr}");
    let (ok, listing, _) = cli(&["list"], None);
    assert!(ok);
    assert_eq!(listing, "nurse1\tcustomer-user\tc1\tPractitioner/n1\n");
    let (ok, stdout, _) = cli(&["unlock", "nurse1"], None);
    assert!(ok && stdout.contains("unlocked"), "{stdout}");
    let (ok, _, _) = cli(&["remove", "nurse1"], None);
    assert!(ok);
    let (ok, _, stderr) = cli(&["remove", "nurse1"], None);
    assert!(!ok && stderr.contains("no user"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cli_postgres() {
    user_cli(crate::common::Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cli_sqlite() {
    user_cli(crate::common::Backend::Sqlite).await
}

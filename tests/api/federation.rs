//! External OpenID providers (issue 4, item 3), against a real one: npm `oidc-provider`
//! (tests/oidc/provider.mjs), started here as a child process. Its JWT access tokens carry the
//! role and organization in claims whose names and values the server is configured to read;
//! its keys come from discovery and are fetched again when it rotates them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::{Backend, TestApp, patient, spawn_with};
use crate::smart_apps::{REDIRECT, auth_params, browser, exchange, query_param};

const LOGIN_SECRET: &str = "login-secret-of-vitalbridge-at-the-provider";

/// The audience the provider puts in tokens for this server, and one for another server.
const AUD: &str = "https://vitalbridge.test/fhir";
const OTHER_AUD: &str = "https://other.test/fhir";

/// The running provider; killed when dropped.
pub struct OpenIdProvider {
    child: Child,
    pub issuer: String,
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OpenIdProvider {
    /// Starts tests/oidc/provider.mjs with `clients` (each with the claims its tokens carry).
    pub fn start(clients: &Value) -> OpenIdProvider {
        Self::start_with(clients, &json!({}), &json!([]))
    }

    /// Starts the provider with `clients`, the people who can sign in (`accounts`, account id →
    /// claims) and the relying parties of the code flow (`login_clients`).
    pub fn start_with(clients: &Value, accounts: &Value, login_clients: &Value) -> OpenIdProvider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/oidc-provider")
                .exists(),
            "npm oidc-provider is not installed in {dir}; run the tests with scripts/test.sh"
        );
        let scopes = "system/*.cruds system/*.rs system/Patient.rs system/Observation.rs";
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_ACCOUNTS", accounts.to_string())
            .env("OIDC_LOGIN_CLIENTS", login_clients.to_string())
            .env(
                "OIDC_RESOURCES",
                json!({ AUD: scopes, OTHER_AUD: scopes }).to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs tests/oidc/provider.mjs");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut out = BufReader::new(stdout);
        out.read_line(&mut line).expect("provider output");
        // The provider prints notices later: keep reading, or its writes fail and it exits.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the provider did not start: {line:?}"));
        OpenIdProvider {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A client-credentials access token of `client` for `resource`.
    pub async fn token(&self, client: &str, scope: &str, resource: &str) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some("secret-of-".to_owned() + client))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await
            .expect("token request");
        let body: Value = r.json().await.expect("json");
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token for {client}: {body}"))
            .to_owned()
    }

    /// Rotates the provider's signing key (`rotate`) or drops all but the newest (`retire`).
    async fn keys(&self, action: &str) -> String {
        let r: Value = reqwest::Client::new()
            .post(format!("{}/_test/{action}", self.issuer))
            .send()
            .await
            .expect("rotate")
            .json()
            .await
            .expect("json");
        r["kid"].as_str().expect("kid").to_owned()
    }
}

fn client(id: &str, scope: &str, claims: Value) -> Value {
    json!({"client_id": id, "client_secret": format!("secret-of-{id}"), "scope": scope, "claims": claims})
}

/// Starts a provider and a server trusting it; seeds two clinics with a patient each.
async fn setup(backend: Backend) -> (OpenIdProvider, TestApp) {
    let provider = OpenIdProvider::start(&json!([
        client(
            "clinic",
            "system/*.cruds",
            json!({"vb_role": "clinic-admin", "vb_org": "fc1"})
        ),
        client(
            "staff",
            "system/Patient.rs system/Observation.rs",
            json!({"vb_role": ["offline_access", "clinic-staff"], "vb_org": "fc1"})
        ),
        client(
            "operator",
            "system/*.cruds",
            json!({"vb_role": "platform-admin"})
        ),
        client("nobody", "system/*.rs", json!({"vb_org": "fc1"})),
        client(
            "outsider",
            "system/*.rs",
            json!({"vb_role": "clinic-admin", "vb_org": "fc9"})
        ),
        client(
            "greedy",
            "system/*.rs",
            json!({"vb_role": ["clinic-admin", "platform-admin"], "vb_org": "fc1"})
        ),
    ]));
    let config = json!([
        {
            "issuer": provider.issuer,
            "audience": AUD,
            "role_claim": "vb_role",
            "role_map": {
                "clinic-admin": "customer",
                "clinic-staff": "customer-user",
                "platform-admin": "admin"
            },
            "organization_claim": "vb_org",
            // This provider may make admins, and speak for the two clinics only.
            "roles": ["admin", "customer", "customer-user"],
            "organizations": ["fc1", "fc2"],
            "clock_skew_seconds": 30,
            "jwks_max_age_seconds": 1
        },
        // Configured, but nothing listens there.
        {"issuer": "http://127.0.0.1:9", "audience": AUD}
    ]);
    (provider, serve_trusting(backend, &config).await)
}

/// A server trusting the providers of `config`, with two clinics and a patient in each.
async fn serve_trusting(backend: Backend, config: &Value) -> TestApp {
    let providers = vitalbridge::auth::federation::parse_config(&config.to_string())
        .expect("valid provider list");
    let app = spawn_with(backend, |s| s.oidc_providers = providers).await;
    for org in ["fc1", "fc2"] {
        crate::common::put_organization(&app, org, None).await;
        let mut p = patient(&format!("Federated-{org}"));
        p["id"] = json!(format!("pat-{org}"));
        p["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
        let r = app.put(&format!("Patient/pat-{org}"), &p).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    app
}

async fn get_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn diagnostics(v: &Value) -> String {
    v["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn external_tokens_act_in_the_role_and_tenant_their_claims_name(backend: Backend) {
    let (provider, app) = setup(backend).await;

    // A clinic's system: role `customer` through the role map, its own organization only.
    let clinic = provider.token("clinic", "system/*.cruds", AUD).await;
    assert_eq!(get_as(&app, &clinic, "Patient/pat-fc1").await.0, 200);
    assert_eq!(get_as(&app, &clinic, "Patient/pat-fc2").await.0, 404);
    let (status, bundle) = get_as(&app, &clinic, "Patient?_total=accurate").await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["total"], 1, "{bundle}");
    let r = reqwest::Client::new()
        .post(app.url("Patient"))
        .bearer_auth(&clinic)
        .json(&{
            let mut p = patient("Registered-By-Federation");
            p["managingOrganization"] = json!({"reference": "Organization/fc1"});
            p
        })
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);

    // Staff: the role claim is an array; the one mapped value decides. Its scopes are read-only.
    let staff = provider
        .token("staff", "system/Patient.rs system/Observation.rs", AUD)
        .await;
    assert_eq!(get_as(&app, &staff, "Patient/pat-fc1").await.0, 200);
    assert_eq!(get_as(&app, &staff, "Patient/pat-fc2").await.0, 404);
    let r = reqwest::Client::new()
        .post(app.url("Patient"))
        .bearer_auth(&staff)
        .json(&patient("Not-Allowed"))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 403);

    // The platform operator: admin, every tenant.
    let operator = provider.token("operator", "system/*.cruds", AUD).await;
    assert_eq!(get_as(&app, &operator, "Patient/pat-fc2").await.0, 200);

    // No mapped role, two roles, or an organization this provider may not speak for: refused.
    for who in ["nobody", "greedy", "outsider"] {
        let t = provider.token(who, "system/*.rs", AUD).await;
        let (status, body) = get_as(&app, &t, "Patient/pat-fc1").await;
        assert_eq!(status, 401, "{who}: {body}");
        assert!(diagnostics(&body).contains("role"), "{body}");
    }

    // A token the same provider issued for another server.
    let elsewhere = provider
        .token("operator", "system/*.cruds", OTHER_AUD)
        .await;
    let (status, body) = get_as(&app, &elsewhere, "Patient/pat-fc1").await;
    assert_eq!(status, 401);
    assert!(diagnostics(&body).contains("audience"), "{body}");

    // A changed claim breaks the provider's signature.
    let mut parts: Vec<String> = clinic.split('.').map(str::to_owned).collect();
    parts[1] = reencode(&parts[1], |c| c["vb_org"] = json!("fc2"));
    let (status, _) = get_as(&app, &parts.join("."), "Patient/pat-fc2").await;
    assert_eq!(status, 401);

    // A configured provider that is down: the token cannot be checked now (503), not "invalid".
    let mut parts: Vec<String> = clinic.split('.').map(str::to_owned).collect();
    parts[1] = reencode(&parts[1], |c| c["iss"] = json!("http://127.0.0.1:9"));
    let (status, body) = get_as(&app, &parts.join("."), "Patient/pat-fc1").await;
    assert_eq!(status, 503, "{body}");
}

/// Decodes a JWT part, changes it and encodes it again.
fn reencode(part: &str, change: impl FnOnce(&mut Value)) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let mut v: Value = serde_json::from_slice(&B64.decode(part).expect("b64")).expect("json");
    change(&mut v);
    B64.encode(v.to_string())
}

/// The provider rotates its signing key: tokens with the new `kid` are accepted (the server
/// fetches the JWKS again), and once the old key is retired, its tokens are refused.
async fn rotated_keys_are_followed_and_retired_keys_refused(backend: Backend) {
    let (provider, app) = setup(backend).await;
    let first = provider.token("clinic", "system/*.cruds", AUD).await;
    let unused_old = provider.token("clinic", "system/*.cruds", AUD).await;
    assert_eq!(get_as(&app, &first, "Patient/pat-fc1").await.0, 200);

    let kid = provider.keys("rotate").await;
    let second = provider.token("clinic", "system/*.cruds", AUD).await;
    let mut signed_with = Value::Null;
    reencode(second.split('.').next().expect("header"), |h| {
        signed_with = h["kid"].clone()
    });
    assert_eq!(signed_with, json!(kid));
    // Refetches caused by unknown kids are paced (2 s).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = get_as(&app, &second, "Patient/pat-fc1").await;
    assert_eq!(status, 200, "token signed by the new key {kid}: {body}");

    provider.keys("retire").await;
    // Past the configured JWKS age (1 s) and the refetch pace.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = get_as(&app, &unused_old, "Patient/pat-fc1").await;
    assert_eq!(status, 401, "{body}");
    assert!(diagnostics(&body).contains("key"), "{body}");
    assert_eq!(get_as(&app, &second, "Patient/pat-fc1").await.0, 200);
}

/// A browser's cookies by name, with the path each is for (hosts are not told apart: the
/// provider and the server are both on 127.0.0.1, where browsers do not tell ports apart either).
#[derive(Default)]
struct Jar(std::collections::BTreeMap<String, (String, String)>);

impl Jar {
    fn take(&mut self, r: &reqwest::Response) {
        for c in r.headers().get_all("set-cookie") {
            let c = c.to_str().expect("cookie");
            let mut attrs = c.split(';');
            let (name, value) = attrs
                .next()
                .and_then(|nv| nv.split_once('='))
                .expect("name=value");
            let mut path = "/".to_owned();
            let mut expired = value.is_empty();
            for a in attrs {
                let (k, v) = a.trim().split_once('=').unwrap_or((a.trim(), ""));
                match k.to_ascii_lowercase().as_str() {
                    "path" => path = v.to_owned(),
                    "max-age" => expired |= v == "0",
                    "expires" => expired |= v.contains("1970"),
                    _ => {}
                }
            }
            if expired {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), (value.to_owned(), path));
            }
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The Cookie header for `url` (RFC 6265 section 5.1.4 path match).
    fn header(&self, url: &str) -> String {
        let path = url::Url::parse(url)
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        self.0
            .iter()
            .filter(|(_, (_, p))| {
                path == *p
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/') || path[p.len()..].starts_with('/')))
            })
            .map(|(k, (v, _))| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Sends `req` with the cookies for its URL, keeps what it sets; status, Location, page.
    async fn send(&mut self, req: reqwest::RequestBuilder) -> (u16, String, String) {
        let (client, req) = req.build_split();
        let mut req = req.expect("request");
        let cookies = self.header(req.url().as_str());
        if !cookies.is_empty() {
            req.headers_mut()
                .insert("cookie", cookies.parse().expect("header value"));
        }
        let r = client.execute(req).await.expect("sent");
        self.take(&r);
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, location, r.text().await.unwrap_or_default())
    }
}

/// From the login page's provider button to the provider sending the browser back: the
/// callback URL, with the browser's cookies (vitalbridge's among them).
async fn sign_in_at_provider(
    app: &TestApp,
    provider: &OpenIdProvider,
    request: &[(String, String)],
    account: &str,
) -> (Jar, String) {
    let mut jar = Jar::default();
    let b = browser();
    let (status, _, page) = jar
        .send(
            b.get(format!("{}/auth/authorize", app.origin()))
                .query(request),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Sign in with Clinic SSO"), "{page}");
    let mut form = request.to_vec();
    form.push(("provider".into(), provider.issuer.clone()));
    let (status, at_provider, page) = jar
        .send(
            b.post(format!("{}/auth/federated/start", app.origin()))
                .form(&form),
        )
        .await;
    assert_eq!(status, 303, "{page}");
    assert!(
        at_provider.starts_with(&format!("{}/auth?", provider.issuer)),
        "{at_provider}"
    );
    assert!(jar.has("vb_federated"));
    for p in ["code_challenge", "nonce", "state"] {
        assert!(at_provider.contains(&format!("{p}=")), "{p}: {at_provider}");
    }
    // The provider's sign-in page, then its answer.
    let (status, interaction, _) = jar.send(b.get(&at_provider)).await;
    assert_eq!(status, 303);
    let interaction = format!("{}{interaction}", provider.issuer);
    let (status, resume, page) = jar
        .send(
            b.post(format!("{interaction}/login"))
                .form(&[("login", account)]),
        )
        .await;
    assert_eq!(status, 303, "{page}");
    let (status, callback, page) = jar.send(b.get(&resume)).await;
    assert_eq!(status, 303, "{page}");
    assert!(
        callback.starts_with(&format!("{}/auth/federated/callback?", app.origin())),
        "{callback}"
    );
    (jar, callback)
}

/// Signs `account` in through the provider; the status, Location and page of the callback.
async fn federated_sign_in(
    app: &TestApp,
    provider: &OpenIdProvider,
    request: &[(String, String)],
    account: &str,
) -> (u16, String, String) {
    let (mut jar, callback) = sign_in_at_provider(app, provider, request, account).await;
    let answer = jar.send(browser().get(&callback)).await;
    assert!(
        !jar.0.contains_key("vb_federated"),
        "the started sign-in is spent"
    );
    answer
}

/// People of a clinic sign in on the login page through the clinic's own provider (OpenID
/// Connect code flow): their role, organization and patient come from the provider's claims,
/// under its allow-lists; the app then gets its code, token and compartment as usual.
async fn people_sign_in_through_their_organizations_provider(backend: Backend) {
    let provider = OpenIdProvider::start_with(
        &json!([]),
        &json!({
            "alice": {"vb_role": "clinic-staff", "vb_org": "fc1"},
            "pat": {"vb_role": "member", "vb_org": "fc1", "vb_patient": "pat-fc1"},
            "eve": {"vb_role": "clinic-staff", "vb_org": "fc9"},
            "root": {"vb_role": "platform-admin"},
            "bob": {"vb_role": "clinic-staff", "vb_org": "fc1"}
        }),
        &json!([{"client_id": "vitalbridge", "client_secret": LOGIN_SECRET}]),
    );
    let config = json!([{
        "issuer": provider.issuer,
        "audience": AUD,
        "role_claim": "vb_role",
        "role_map": {
            "clinic-staff": "customer-user",
            "member": "patient",
            "platform-admin": "admin"
        },
        "organization_claim": "vb_org",
        "patient_claim": "vb_patient",
        "organizations": ["fc1", "fc2"],
        "login": {
            "name": "Clinic SSO",
            "client_id": "vitalbridge",
            "client_secret": LOGIN_SECRET,
            "scope": "openid vb"
        }
    }]);
    let app = serve_trusting(backend, &config).await;
    let r = crate::backend_services::register(
        &app,
        json!({
            "role": "patient", "public": true, "name": "Vitals app",
            "redirect_uris": [REDIRECT],
            "scope": "patient/*.rs user/*.rs openid fhirUser launch/patient"
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let app_id = r.json()["client_id"].as_str().expect("id").to_owned();

    // Clinic staff: customer-user of fc1, from the userinfo claims.
    let verifier = "federated-verifier-0123456789-0123456789-abc";
    let request = auth_params(&app, &app_id, "user/Patient.rs openid fhirUser", verifier);
    let (status, location, page) = federated_sign_in(&app, &provider, &request, "alice").await;
    assert_eq!(status, 303, "{page}");
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-42"));
    let code = query_param(&location, "code").expect("code");
    let r = exchange(&app, &app_id, &code, verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(get_as(&app, &token, "Patient/pat-fc1").await.0, 200);
    assert_eq!(get_as(&app, &token, "Patient/pat-fc2").await.0, 404);
    let (_, bundle) = get_as(&app, &token, "Patient?_total=accurate").await;
    assert_eq!(bundle["total"], 1, "{bundle}");

    // The account is the provider's: listed with its role, no password signs in with it.
    let username = format!("{}#alice", provider.issuer);
    let r = app
        .send(app.client.get(format!("{}/auth/users", app.origin())))
        .await;
    let users = r.json();
    let listed = users
        .as_array()
        .or_else(|| users["users"].as_array())
        .expect("user list")
        .iter()
        .find(|u| u["username"] == json!(username))
        .cloned()
        .unwrap_or_else(|| panic!("{username} not in {users}"));
    assert_eq!(listed["role"], "customer-user");
    assert_eq!(listed["organization"], "fc1");
    let mut form = auth_params(&app, &app_id, "user/Patient.rs", verifier);
    form.push(("username".into(), username.clone()));
    form.push(("password".into(), "!federated".into()));
    let r = browser()
        .post(format!("{}/auth/authorize", app.origin()))
        .form(&form)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);

    // A patient: the patient claim puts the own record in context.
    let request = auth_params(
        &app,
        &app_id,
        "patient/*.rs launch/patient openid fhirUser",
        verifier,
    );
    let (status, location, page) = federated_sign_in(&app, &provider, &request, "pat").await;
    assert_eq!(status, 303, "{page}");
    let code = query_param(&location, "code").expect("code");
    let r = exchange(&app, &app_id, &code, verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["patient"], "pat-fc1", "{}", r.text);
    let token = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(get_as(&app, &token, "Patient/pat-fc1").await.0, 200);
    assert_eq!(get_as(&app, &token, "Patient/pat-fc2").await.0, 404);

    // An organization the provider may not speak for, and a role it may not grant (admin).
    let request = auth_params(&app, &app_id, "user/Patient.rs", verifier);
    for (account, why) in [("eve", "organization fc9"), ("root", "role admin")] {
        let (status, _, page) = federated_sign_in(&app, &provider, &request, account).await;
        assert_eq!(status, 403, "{account}: {page}");
        assert!(page.contains(why), "{account}: {page}");
    }

    // A local account already holds the name a sign-in maps to: it is not taken over.
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/users", app.origin()))
                .json(&json!({
                    "username": format!("{}#bob", provider.issuer),
                    "password": "a local password of bob", "role": "customer-user",
                    "organization": "fc2"
                })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (status, _, page) = federated_sign_in(&app, &provider, &request, "bob").await;
    assert_eq!(status, 409, "{page}");

    // The callback in another browser (no cookie), or with another state: refused.
    let (mut jar, callback) = sign_in_at_provider(&app, &provider, &request, "alice").await;
    let (status, _, _) = Jar::default().send(browser().get(&callback)).await;
    assert_eq!(status, 400);
    let forged = callback.replace("state=", "state=x");
    let (status, _, _) = jar.send(browser().get(&forged)).await;
    assert_eq!(status, 400);
}

macro_rules! on_both {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case(crate::common::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case(crate::common::Backend::Sqlite).await
            }
        }
    };
}

on_both!(external_tokens_act_in_the_role_and_tenant_their_claims_name);
on_both!(rotated_keys_are_followed_and_retired_keys_refused);
on_both!(people_sign_in_through_their_organizations_provider);

//! External OpenID providers (issue 4, item 3), against a real one: npm `oidc-provider`
//! (tests/oidc/provider.mjs), started here as a child process. Its JWT access tokens carry the
//! role and organization in claims whose names and values the server is configured to read;
//! its keys come from discovery and are fetched again when it rotates them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::{Backend, TestApp, patient, spawn_with};

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
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("provider output");
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
    (provider, app)
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

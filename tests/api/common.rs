//! Starts the real application (Application::build, as `main` does) on 127.0.0.1:0 against a
//! fresh database: a new PostgreSQL database on the server at VB_TEST_PG_URL, or a new SQLite
//! file. Every case runs on both backends through `both!`.

use serde_json::Value;
use sqlx::Connection;
use vitalbridge::Application;
use vitalbridge::config::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    pub database_url: String,
}

pub fn pg_admin_url() -> String {
    std::env::var("VB_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database URL for `backend`.
pub async fn fresh_database(backend: Backend) -> String {
    let name = format!("vb_test_{}", uuid::Uuid::new_v4().simple());
    match backend {
        Backend::Postgres => {
            let admin = pg_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!("PostgreSQL does not answer at {admin} ({e}); run the tests with scripts/test.sh, which starts it")
            });
            sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let mut url = url::Url::parse(&admin).expect("VB_TEST_PG_URL is a URL");
            url.set_path(&name);
            url.to_string()
        }
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("vitalbridge-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            format!("sqlite://{}", dir.join(format!("{name}.db")).display())
        }
    }
}

/// The bootstrap admin client every test server is started with.
pub const ADMIN_ID: &str = "test-admin";
pub const ADMIN_SECRET: &str = "test-admin-secret: with spaces & symbols";

/// One signing key for every server of a test run: generating an RSA key per test would
/// dominate start-up. Production servers generate theirs (see `a_generated_key_is_kept`).
pub fn test_signing_key() -> String {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| vitalbridge::auth::keys::SigningKey::generate_pem().expect("RSA key"))
        .clone()
}

pub fn test_settings(database_url: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        database_url: Some(database_url.to_owned()),
        db_pool: 8,
        bootstrap_client: Some(vitalbridge::auth::BootstrapClient {
            client_id: ADMIN_ID.into(),
            secret: ADMIN_SECRET.into(),
        }),
        signing_key_pem: Some(test_signing_key()),
        // The tests' receivers listen on the loopback interface.
        subscriptions: vitalbridge::subscriptions::Config {
            egress: vitalbridge::subscriptions::egress::Egress::parse("127.0.0.1")
                .expect("an address"),
            ..Default::default()
        },
        // Billing runs by hand (`vitalbridge bill`, `billing::schedule::tick`) in the tests
        // that are about it, not behind every other test's back.
        billing: vitalbridge::billing::schedule::Config {
            enabled: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// An access token for the bootstrap admin, obtained as a backend service does: client
/// credentials with HTTP Basic authentication at the token endpoint (`origin` is the server's
/// scheme, host and port).
pub async fn admin_token(origin: &str) -> String {
    admin_token_with(&reqwest::Client::new(), origin).await
}

/// [`admin_token`] through `http` (e.g. a client that trusts a test CA).
pub async fn admin_token_with(http: &reqwest::Client, origin: &str) -> String {
    let r = http
        .post(format!("{origin}/auth/token"))
        .basic_auth(
            // RFC 6749 section 2.3.1: form-urlencoded before Basic encoding.
            url::form_urlencoded::byte_serialize(ADMIN_ID.as_bytes()).collect::<String>(),
            Some(url::form_urlencoded::byte_serialize(ADMIN_SECRET.as_bytes()).collect::<String>()),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request");
    let status = r.status();
    let body: Value = r.json().await.expect("token response is JSON");
    assert_eq!(status, 200, "token request refused: {body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A client that sends the admin's bearer token with every request.
pub async fn admin_client(origin: &str) -> reqwest::Client {
    let token = admin_token(origin).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_on(backend, fresh_database(backend).await, tweak).await
}

/// A server on `database_url`, which may hold what an older build left there.
pub async fn spawn_on(
    backend: Backend,
    database_url: String,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings(&database_url);
    tweak(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let addr = app.local_addr().expect("bound");
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        base: format!("http://{addr}/fhir"),
        client: admin_client(&format!("http://{addr}")).await,
        backend,
        database_url,
    }
}

pub async fn spawn(backend: Backend) -> TestApp {
    spawn_with(backend, |_| {}).await
}

/// A response read whole: status, headers and body.
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the body is an OperationOutcome and returns its issues.
    pub fn outcome_issues(&self) -> Vec<Value> {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text);
        v["issue"].as_array().cloned().unwrap_or_default()
    }
}

impl TestApp {
    /// Runs `statement` on the server's database behind its back, to set up what only an older
    /// build or a failure could leave there.
    pub async fn sql(&self, statement: &str) {
        let done = match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .expect("connect");
                sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                    .execute(&mut c)
                    .await
                    .map(|_| ())
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .expect("connect");
                sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                    .execute(&mut c)
                    .await
                    .map(|_| ())
            }
        };
        done.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    /// Scheme, host and port of the server.
    pub fn origin(&self) -> String {
        self.base.trim_end_matches("/fhir").to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        Resp {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.client
                .put(self.url(path))
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, body: &Value) -> String {
        let ty = body["resourceType"].as_str().expect("resourceType");
        let r = self.post(ty, body).await;
        assert_eq!(r.status, 201, "create {ty}: {}", r.text);
        r.json()["id"].as_str().expect("id").to_owned()
    }
}

/// Registers a client (`POST /auth/clients` as the admin, `body` as its registration) and
/// returns an access token it gets at the token endpoint with client_credentials.
pub async fn client_token(app: &TestApp, body: &Value) -> String {
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/clients", app.origin()))
                .json(body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let client = r.json();
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .basic_auth(
                    client["client_id"].as_str().expect("id"),
                    client["client_secret"].as_str(),
                )
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["access_token"].as_str().expect("token").to_owned()
}

/// An access token for a patient of organization `org` whose record is `Patient/{patient_id}`,
/// obtained the way a patient-facing app does: a public app with `patient/*.rs`, the user's
/// sign-in on the login page, the authorization code with PKCE, the token exchange.
pub async fn patient_app_token(app: &TestApp, org: &str, patient_id: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    const REDIRECT: &str = "http://patient-app.test/cb";
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/clients", app.origin()))
                .json(&serde_json::json!({
                    "role": "patient", "public": true, "redirect_uris": [REDIRECT],
                    "scope": "patient/*.rs launch/patient"
                })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let client_id = r.json()["client_id"].as_str().expect("id").to_owned();
    let (username, password) = (format!("patient-{suffix}"), format!("pw-{suffix}"));
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/users", app.origin()))
                .json(&serde_json::json!({
                    "username": username, "password": password, "role": "patient",
                    "organization": org, "fhirUser": format!("Patient/{patient_id}")
                })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let verifier = format!("verifier-{suffix}-{suffix}");
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = browser
        .post(format!("{}/auth/authorize", app.origin()))
        .form(&[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "patient/*.rs launch/patient"),
            ("state", "s"),
            ("aud", &app.base),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("username", &username),
            ("password", &password),
        ])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let code = url::Url::parse(&location)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("client_id", &client_id),
                    ("code_verifier", &verifier),
                ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["patient"], patient_id);
    r.json()["access_token"].as_str().expect("token").to_owned()
}

/// Runs an async test case on PostgreSQL and on SQLite.
#[macro_export]
macro_rules! both {
    ($case:ident) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$case($crate::common::spawn($crate::common::Backend::Postgres).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$case($crate::common::spawn($crate::common::Backend::Sqlite).await).await
            }
        }
    };
    // With the settings changed by `$tweak` (a `fn(&mut Settings)`).
    ($case:ident, $tweak:path) => {
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app =
                    $crate::common::spawn_with($crate::common::Backend::Postgres, $tweak).await;
                super::$case(app).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::common::spawn_with($crate::common::Backend::Sqlite, $tweak).await;
                super::$case(app).await
            }
        }
    };
}

/// Creates Organization `id` (as the admin), under `part_of` when given.
pub async fn put_organization(app: &TestApp, id: &str, part_of: Option<&str>) {
    let mut org =
        serde_json::json!({"resourceType": "Organization", "id": id, "name": format!("Org {id}")});
    if let Some(p) = part_of {
        org["partOf"] = serde_json::json!({"reference": format!("Organization/{p}")});
    }
    let r = app.put(&format!("Organization/{id}"), &org).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
}

pub fn patient(family: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:vb:test", "value": family}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1950-04-01"
    })
}

pub fn heart_rate(patient_id: &str, value: f64) -> Value {
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": "2026-11-20T08:30:00Z",
        "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// `v` with `key` set to `value`.
pub fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

//! SMART Backend Services client authentication with `private_key_jwt`
//! (https://hl7.org/fhir/smart-app-launch/backend-services.html): clients registered with a
//! JWKS or a JWKS URL (served by a real HTTP server here) sign assertions with RS384 or ES384;
//! every attack of issue 4 item 6 that concerns assertions is refused.

use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, test_signing_key};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An RSA key pair (the run's shared test key) as an encoding key and a public JWK.
fn rsa_key(kid: &str) -> (EncodingKey, Value) {
    let pem = test_signing_key();
    let mut jwk = vitalbridge::auth::keys::SigningKey::from_pem(&pem)
        .expect("key")
        .jwks()["keys"][0]
        .clone();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("RS384");
    (EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa"), jwk)
}

/// A fresh P-384 key pair.
fn ec_key(kid: &str) -> (EncodingKey, Value) {
    use p384::pkcs8::{EncodePrivateKey, LineEnding};
    let sk = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = sk.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let mut jwk: Value = serde_json::from_str(&sk.public_key().to_jwk_string()).expect("jwk");
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!("ES384");
    (EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec"), jwk)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A signed assertion for `client` at `app`'s token endpoint; `tweak` changes the claims.
fn assertion(
    app: &TestApp,
    key: &EncodingKey,
    alg: Algorithm,
    kid: &str,
    client: &str,
    tweak: impl FnOnce(&mut Value),
) -> String {
    let mut claims = json!({
        "iss": client, "sub": client, "aud": format!("{}/auth/token", app.origin()),
        "exp": now() + 240, "jti": uuid::Uuid::new_v4().to_string()
    });
    tweak(&mut claims);
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, key).expect("sign")
}

pub(crate) async fn register(app: &TestApp, body: Value) -> crate::common::Resp {
    app.send(
        app.client
            .post(format!("{}/auth/clients", app.origin()))
            .json(&body),
    )
    .await
}

async fn token(app: &TestApp, jwt: &str) -> (u16, Value) {
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", jwt),
                ]),
        )
        .await;
    (r.status, r.json())
}

async fn private_key_jwt(app: TestApp) {
    let (rsa, rsa_jwk) = rsa_key("rsa-1");
    let r = register(
        &app,
        json!({"client_id": "ehr-rsa", "role": "admin", "jwks": {"keys": [rsa_jwk]}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json().get("client_secret").is_none(), "{}", r.text);
    assert_eq!(r.json()["token_endpoint_auth_method"], "private_key_jwt");

    let jwt = assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |_| {});
    let (status, body) = token(&app, &jwt).await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().expect("token");
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("Patient"))
                .bearer_auth(access),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The same assertion again: refused (jti replay).
    let (status, body) = token(&app, &jwt).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );

    let (ec, ec_jwk) = ec_key("ec-1");
    let r = register(
        &app,
        json!({"client_id": "ehr-ec", "role": "customer", "organization": "c1", "jwks": {"keys": [ec_jwk]}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let jwt = assertion(&app, &ec, Algorithm::ES384, "ec-1", "ehr-ec", |_| {});
    let (status, body) = token(&app, &jwt).await;
    assert_eq!(status, 200, "ES384: {body}");

    // Attacks on the assertion, each refused with invalid_client.
    let other_rsa = {
        let pem = vitalbridge::auth::keys::SigningKey::generate_pem().expect("pem");
        EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa")
    };
    let hmac_with_public_key = {
        let (_, jwk) = rsa_key("rsa-1");
        EncodingKey::from_secret(jwk.to_string().as_bytes())
    };
    let attacks: Vec<(&str, String)> = vec![
        (
            "exp more than 5 minutes ahead",
            assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |c| {
                c["exp"] = json!(now() + 3600)
            }),
        ),
        (
            "expired",
            assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |c| {
                c["exp"] = json!(now() - 600)
            }),
        ),
        (
            "aud is another server",
            assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |c| {
                c["aud"] = json!("https://elsewhere.example/token")
            }),
        ),
        (
            "sub is another client",
            assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |c| {
                c["sub"] = json!("ehr-ec")
            }),
        ),
        (
            "no jti",
            assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |c| {
                c.as_object_mut().map(|o| o.remove("jti"));
            }),
        ),
        (
            "unknown kid",
            assertion(&app, &rsa, Algorithm::RS384, "rsa-9", "ehr-rsa", |_| {}),
        ),
        (
            "another key under the registered kid",
            assertion(
                &app,
                &other_rsa,
                Algorithm::RS384,
                "rsa-1",
                "ehr-rsa",
                |_| {},
            ),
        ),
        (
            "HS256 keyed with the public key",
            assertion(
                &app,
                &hmac_with_public_key,
                Algorithm::HS256,
                "rsa-1",
                "ehr-rsa",
                |_| {},
            ),
        ),
        (
            "RS256 instead of RS384",
            assertion(&app, &rsa, Algorithm::RS256, "rsa-1", "ehr-rsa", |_| {}),
        ),
        ("alg none", {
            use base64::Engine as _;
            let b64 =
                |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": "rsa-1"})),
                b64(json!({"iss": "ehr-rsa", "sub": "ehr-rsa",
                    "aud": format!("{}/auth/token", app.origin()), "exp": now() + 60, "jti": "n1"}))
            )
        }),
        (
            "a client registered with a secret",
            assertion(
                &app,
                &rsa,
                Algorithm::RS384,
                "rsa-1",
                crate::common::ADMIN_ID,
                |_| {},
            ),
        ),
    ];
    for (what, jwt) in attacks {
        let (status, body) = token(&app, &jwt).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {body}"
        );
    }
    // One method only.
    let jwt = assertion(&app, &rsa, Algorithm::RS384, "rsa-1", "ehr-rsa", |_| {});
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .basic_auth(crate::common::ADMIN_ID, Some(crate::common::ADMIN_SECRET))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", jwt.as_str()),
                ]),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"], "invalid_request");

    // Registrations that cannot work are refused.
    for bad in [
        json!({"role": "admin", "jwks": {"keys": []}}),
        json!({"role": "admin", "jwks": {"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}}),
        json!({"role": "admin", "jwks": {"keys": [rsa_key("a").1]}, "jwks_url": "https://x.example/jwks"}),
        json!({"role": "admin", "jwks_url": "ftp://x.example/jwks"}),
    ] {
        let r = register(&app, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }

    // Discovery advertises the method and algorithms.
    let smart: Value = reqwest::get(app.url(".well-known/smart-configuration"))
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert!(
        smart["token_endpoint_auth_methods_supported"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("private_key_jwt"))),
        "{smart}"
    );
    assert_eq!(
        smart["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    assert!(
        smart["capabilities"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("client-confidential-asymmetric")))
    );
}
both!(private_key_jwt);

/// A client that publishes its keys at a URL: the server fetches them, and fetches again when
/// an assertion names a key it has not seen (the client rotated its keys).
async fn jwks_url_with_rotation(app: TestApp) {
    let (rsa, rsa_jwk) = rsa_key("rot-1");
    let served = Arc::new(Mutex::new(json!({"keys": [rsa_jwk]})));
    let keys = served.clone();
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys.lock().expect("lock").clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let r = register(
        &app,
        json!({"client_id": "ehr-url", "role": "admin", "jwks_url": jwks_url}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["jwks_url"], json!(jwks_url));
    let jwt = assertion(&app, &rsa, Algorithm::RS384, "rot-1", "ehr-url", |_| {});
    let (status, body) = token(&app, &jwt).await;
    assert_eq!(status, 200, "{body}");

    // Rotation: the client now publishes only a new EC key.
    let (ec, ec_jwk) = ec_key("rot-2");
    *served.lock().expect("lock") = json!({"keys": [ec_jwk]});
    // Unknown kids refetch at most every two seconds.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let jwt = assertion(&app, &ec, Algorithm::ES384, "rot-2", "ehr-url", |_| {});
    let (status, body) = token(&app, &jwt).await;
    assert_eq!(status, 200, "after rotation: {body}");
    // The retired key no longer works once the new set was fetched.
    let jwt = assertion(&app, &rsa, Algorithm::RS384, "rot-1", "ehr-url", |_| {});
    let (status, body) = token(&app, &jwt).await;
    assert_eq!(status, 401, "retired key: {body}");
}
both!(jwks_url_with_rotation);

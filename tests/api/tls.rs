//! HTTPS with rustls (issue 4, item 8): `serve` terminates TLS itself, HTTP/2 and HTTP/1.1 by
//! ALPN, and can require client certificates from a CA (mutual TLS, for hubs). The certificates
//! are made here: a CA, a server certificate for localhost and 127.0.0.1, a client certificate
//! from that CA and one from another CA.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use vitalbridge::Application;
use vitalbridge::http::tls::TlsFiles;

use crate::common::{Backend, admin_token_with, fresh_database, patient, test_settings};

pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    ca_pem: String,
    /// A hub's certificate and key from the CA, as one PEM (reqwest's identity format).
    client_identity: String,
    /// The same from another CA.
    stranger_identity: String,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("CA").pem();
    (pem, Issuer::new(params, key))
}

fn client_identity(issuer: &Issuer<'static, KeyPair>, name: &str) -> String {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer).expect("client cert");
    format!("{}{}", cert.pem(), key.serialize_pem())
}

pub(crate) fn pki() -> Pki {
    let dir = std::env::temp_dir()
        .join("vitalbridge-tests")
        .join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca_pem, issuer) = ca("vitalbridge test CA");
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write");
    std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write");
    let (_, stranger_ca) = ca("another CA");
    Pki {
        client_identity: client_identity(&issuer, "hub-0001"),
        stranger_identity: client_identity(&stranger_ca, "hub-9999"),
        dir,
        ca_pem,
    }
}

impl Pki {
    fn files(&self, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server.key"),
            client_ca: mutual.then(|| self.dir.join("ca.pem")),
        }
    }

    /// A client that trusts the test CA, with a client certificate when given.
    fn client(&self, identity: Option<&str>, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA"),
            );
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).expect("identity"));
        }
        if http1_only {
            b = b.http1_only();
        }
        b.build().expect("client")
    }
}

/// Starts a server with TLS from `files`; returns its `https://localhost:port` origin.
async fn serve_tls(files: TlsFiles) -> String {
    let mut settings = test_settings(&fresh_database(Backend::Sqlite).await);
    settings.tls = Some(files);
    let app = Application::build(settings).await.expect("builds");
    let port = app.local_addr().expect("addr").port();
    tokio::spawn(app.run_until(std::future::pending()));
    format!("https://localhost:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http1() {
    let pki = pki();
    let origin = serve_tls(pki.files(false)).await;
    let h1 = pki.client(None, true);
    let r = h1
        .get(format!("{origin}/healthz"))
        .send()
        .await
        .expect("https");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // ALPN picks HTTP/2; a token obtained over it works for the FHIR API over it, and the
    // URLs the server writes are https ones.
    let h2 = pki.client(None, false);
    let token = admin_token_with(&h2, &origin).await;
    let r = h2
        .post(format!("{origin}/fhir/Patient"))
        .bearer_auth(&token)
        .json(&patient("Over-Tls"))
        .send()
        .await
        .expect("create");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(
        location.starts_with(&format!("{origin}/fhir/Patient/")),
        "{location}"
    );
    let discovery: serde_json::Value = h2
        .get(format!("{origin}/fhir/.well-known/smart-configuration"))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["token_endpoint"], format!("{origin}/auth/token"));

    // Plain HTTP to the TLS port gets no answer it could mistake for one.
    let plain = reqwest::Client::new()
        .get(origin.replace("https://", "http://") + "/healthz")
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_certificate_from_the_configured_ca() {
    let pki = pki();
    let origin = serve_tls(pki.files(true)).await;
    let url = format!("{origin}/healthz");
    let without = pki.client(None, false).get(&url).send().await;
    assert!(
        without.is_err(),
        "no client certificate must fail the handshake"
    );
    let stranger = pki
        .client(Some(&pki.stranger_identity), false)
        .get(&url)
        .send()
        .await;
    assert!(
        stranger.is_err(),
        "a certificate of another CA must be refused"
    );
    for http1 in [true, false] {
        let r = pki
            .client(Some(&pki.client_identity), http1)
            .get(&url)
            .send()
            .await
            .expect("a hub with its certificate gets through");
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn bad_tls_files_stop_the_start_with_a_clear_message() {
    let pki = pki();
    let other = KeyPair::generate().expect("key");
    let wrong_key = pki.dir.join("wrong.key");
    std::fs::write(&wrong_key, other.serialize_pem()).expect("write");
    let cases = [
        (
            TlsFiles {
                key: wrong_key,
                ..pki.files(false)
            },
            "do not belong together",
        ),
        (
            TlsFiles {
                cert: pki.dir.join("missing.pem"),
                ..pki.files(false)
            },
            "cannot read the TLS certificate",
        ),
        (
            TlsFiles {
                client_ca: Some(pki.dir.join("server.key")),
                ..pki.files(false)
            },
            "holds no certificate",
        ),
    ];
    for (files, message) in cases {
        let mut settings = test_settings(&fresh_database(Backend::Sqlite).await);
        settings.tls = Some(files);
        let err = match Application::build(settings).await {
            Ok(_) => panic!("started with bad TLS files"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(message), "{err}");
    }
}

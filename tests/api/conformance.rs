//! `vitalbridge conformance` (issue 9, item 3) run as a subprocess, as CI and integrators run it:
//! against this server on both backends it passes every check, none skipped; against a server
//! that is not FHIR it fails, saying what it expected and what came back.

use std::process::Output;

use crate::both;
use crate::common::{ADMIN_ID, ADMIN_SECRET, TestApp};

/// The checks of each group, in the order they run; a new check is added here too.
const GROUPS: &[(&str, usize)] = &[
    ("REST core", 18),
    ("Search", 15),
    ("SMART discovery and Backend Services", 6),
    ("Subscriptions", 3),
    ("PHD device profiles", 5),
    ("Vital-signs searches (US Core style)", 6),
];

/// Runs `vitalbridge conformance` with `args`; its output and the JUnit XML it wrote.
async fn conformance(args: Vec<String>) -> (Output, String) {
    let junit = std::env::temp_dir().join(format!(
        "vitalbridge-conformance-{}.xml",
        uuid::Uuid::new_v4().simple()
    ));
    let path = junit.clone();
    // The server under test runs on this test's runtime: wait for the child off it.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .arg("conformance")
            .args(args)
            .arg("--junit")
            .arg(&path)
            .env("VB_LOG", "warn")
            .output()
            .expect("vitalbridge runs")
    })
    .await
    .expect("joined");
    let xml = std::fs::read_to_string(&junit).unwrap_or_default();
    let _ = std::fs::remove_file(&junit);
    (out, xml)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of attribute `name` in the first element of `xml` that starts with `element`.
fn attribute(xml: &str, element: &str, name: &str) -> Option<usize> {
    let start = xml.find(element)?;
    let tag = &xml[start..start + xml[start..].find('>')?];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[at..at + tag[at..].find('"')?].parse().ok()
}

/// Every check passes against vitalbridge, with the client credentials of its bootstrap admin
/// (the suite discovers the token endpoint and gets its own token); nothing is skipped because
/// vitalbridge advertises everything the suite checks.
async fn passes_against_vitalbridge(app: TestApp) {
    let (out, xml) = conformance(vec![
        "--base-url".into(),
        app.base.clone(),
        "--client-id".into(),
        ADMIN_ID.into(),
        "--client-secret".into(),
        ADMIN_SECRET.into(),
    ])
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the suite failed:\n{stdout}\n{stderr}"
    );
    let total: usize = GROUPS.iter().map(|(_, n)| n).sum();
    assert!(
        stdout.contains(&format!(
            "{total} checks: {total} passed, 0 failed, 0 skipped"
        )),
        "{stdout}"
    );
    assert_eq!(
        attribute(&xml, "<testsuites", "tests"),
        Some(total),
        "{xml}"
    );
    assert_eq!(attribute(&xml, "<testsuites", "failures"), Some(0), "{xml}");
    assert_eq!(attribute(&xml, "<testsuites", "skipped"), Some(0), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), total);
    assert!(
        !xml.contains("<failure") && !xml.contains("<skipped"),
        "{xml}"
    );
    for (group, n) in GROUPS {
        let suite = format!("<testsuite name=\"{group}\"");
        assert_eq!(attribute(&xml, &suite, "tests"), Some(*n), "{group}: {xml}");
        assert!(stdout.contains(&format!("\n{group}\n")), "{stdout}");
    }
    // What the checks made is deleted again: "deleted 110 of the 110 resources …".
    let deleted = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deleted "))
        .unwrap_or_else(|| panic!("no clean-up line: {stdout}"));
    let words: Vec<&str> = deleted.split_whitespace().collect();
    assert!(words.len() > 3 && words[0] == words[3], "{deleted}");
}
both!(passes_against_vitalbridge);

/// A server that answers `status` with `body` (and `content_type`) to everything, on a port of
/// its own; its FHIR base URL.
async fn wrong_server(status: u16, content_type: &'static str, body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let addr = listener.local_addr().expect("address");
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::from_u16(status).expect("status"),
            [("content-type", content_type)],
            body,
        )
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/fhir")
}

/// A server failing every request: the suite exits non-zero, every check that needs an answer
/// fails naming the status and the body, and the JUnit file says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_fails_the_suite() {
    let base = wrong_server(500, "text/plain", "upstream exploded").await;
    let (out, xml) = conformance(vec![
        "--base-url".into(),
        base.clone(),
        "--notification-timeout".into(),
        "2".into(),
    ])
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("conformance checks failed"), "{stderr}");
    assert!(
        stdout.contains("FAIL  metadata is a CapabilityStatement for FHIR 4.0.x"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "expected status 200; GET {base}/metadata answered 500: upstream exploded"
        )),
        "{stdout}"
    );
    let failures = attribute(&xml, "<testsuites", "failures").expect("failures");
    assert!(failures >= 30, "{failures} failures: {xml}");
    assert!(
        xml.contains("<failure message=\"expected status 200; GET "),
        "{xml}"
    );
}

/// A web server that is not FHIR (an HTML page for every URL, with 200): the suite is not
/// fooled by the status and fails on what the body is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_is_not_a_fhir_server() {
    let base = wrong_server(200, "text/html", "<html><body>Welcome</body></html>").await;
    let (out, xml) = conformance(vec![
        "--base-url".into(),
        base,
        "--notification-timeout".into(),
        "2".into(),
    ])
    .await;
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL  metadata is a CapabilityStatement for FHIR 4.0.x"),
        "{stdout}"
    );
    assert!(stdout.contains("expected a JSON body"), "{stdout}");
    // Nothing passes against it.
    let passed = stdout.lines().filter(|l| l.starts_with("  pass ")).count();
    assert_eq!(passed, 0, "{stdout}");
    assert!(attribute(&xml, "<testsuites", "failures").is_some_and(|f| f >= 30));
}

//! The API explorer in a real browser (issue 9, item 2): Debian's headless Chromium, driven
//! through ChromeDriver's W3C WebDriver protocol (https://www.w3.org/TR/webdriver2/) over
//! plain HTTP. The page loads from vitalbridge alone, a developer pastes a token into
//! "Authorize", tries `GET /fhir/Patient/{id}` and gets the patient; a screenshot is written to
//! `target/screenshots/explorer.png`. `scripts/test.sh` installs `chromium` and
//! `chromium-driver`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Backend, admin_token, spawn};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A ChromeDriver process, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} and {CHROMIUM} are missing: scripts/test.sh installs the Debian \
             packages chromium and chromium-driver"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut driver = Driver {
            child,
            url,
            http,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1800"]
            }
        }}});
        let created = driver.call("POST", "/session", caps).await;
        driver.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        driver
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}/session", self.url)
        } else {
            format!("{}/session/{}{path}", self.url, self.session)
        };
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let r: Value = req
            .send()
            .await
            .expect("webdriver answers")
            .json()
            .await
            .expect("JSON");
        r["value"].clone()
    }

    /// Runs `script` in the page; its result.
    async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits until `script` returns something truthy; that value. Generous: on this 2-core
    /// machine, idle, opening an operation takes Swagger UI about 30 s (it samples an example
    /// response from the recursive FHIR schemas) and its answer 14 s more; under the test run's
    /// load, longer.
    async fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let v = self.script(script, json!([])).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) && v.get("error").is_none() {
                return v;
            }
            if Instant::now() > deadline {
                let text = self
                    .script("return document.body.innerText.slice(0, 2000)", json!([]))
                    .await;
                panic!("timed out waiting for {what}; the page says: {text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The element `css` selects (waiting for it), as a WebDriver element reference.
    async fn element(&self, css: &str) -> Value {
        self.until(
            css,
            &format!("return document.querySelector({})", json!(css)),
        )
        .await
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        let id = element_id(&e);
        let r = self
            .call("POST", &format!("/element/{id}/click"), json!({}))
            .await;
        assert!(r.is_null(), "click on {css}: {r}");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        let id = element_id(&e);
        self.call("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        let r = self
            .call(
                "POST",
                &format!("/element/{id}/value"),
                json!({"text": text}),
            )
            .await;
        assert!(r.is_null(), "typing into {css}: {r}");
    }
}

fn element_id(e: &Value) -> String {
    // W3C WebDriver section 12.1: the web element identifier.
    e["element-6066-11e4-a52e-4f735466cecf"]
        .as_str()
        .unwrap_or_else(|| panic!("not an element: {e}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_tries_a_request_in_the_explorer() {
    let app = spawn(Backend::Sqlite).await;
    let put = app
        .put(
            "Patient/explorer-1",
            &json!({"resourceType": "Patient", "id": "explorer-1",
                    "name": [{"family": "Quetzal", "given": ["Ada"]}]}),
        )
        .await;
    assert!(matches!(put.status, 200 | 201), "{}", put.text);
    let driver = Driver::start().await;
    driver
        .call(
            "POST",
            "/url",
            json!({"url": format!("{}/docs/", app.origin())}),
        )
        .await;
    // The page loaded the document: its title and the operations of the Patient tag.
    let title = driver
        .until(
            "the document's title",
            "const t = document.querySelector('.swagger-ui .info .title'); return t && t.innerText",
        )
        .await;
    assert!(
        title.as_str().unwrap_or_default().contains("vitalbridge"),
        "{title}"
    );

    // Try GET /fhir/Patient/{id}.
    driver
        .click("#operations-Patient-readPatient .opblock-summary-control, #operations-Patient-readPatient .opblock-summary")
        .await;
    // The explorer opens operations ready to try (`tryItOutEnabled`): the button then says
    // "Cancel", and clicking it would lock the inputs.
    let button = driver
        .until(
            "the try-out button",
            "const b = document.querySelector('#operations-Patient-readPatient .try-out__btn'); return b && b.innerText.trim()",
        )
        .await;
    if button == "Try it out" {
        driver
            .click("#operations-Patient-readPatient .try-out__btn")
            .await;
    }
    driver
        .type_into(
            "#operations-Patient-readPatient tr[data-param-name='id'] input",
            "explorer-1",
        )
        .await;
    // Authorize with a bearer token fetched only now, just before Execute: tokens live five
    // minutes, and on a loaded 2-core machine each step in the browser can take many seconds
    // (a CI run once saw a token fetched before opening the operation expire before Execute).
    let token = admin_token(&app.origin()).await;
    driver.click(".swagger-ui .btn.authorize").await;
    driver
        .type_into(
            ".auth-container input[type=text], .auth-container input:not([type])",
            &token,
        )
        .await;
    driver
        .click(".auth-container .auth-btn-wrapper .btn.modal-btn.auth.authorize")
        .await;
    driver.click(".auth-btn-wrapper .btn-done").await;

    driver
        .click("#operations-Patient-readPatient .execute")
        .await;
    let status = driver
        .until(
            "the response",
            "const s = document.querySelector('#operations-Patient-readPatient .live-responses-table tbody .response-col_status'); return s && s.innerText.trim()",
        )
        .await;
    let body = driver
        .script(
            "const b = document.querySelector('#operations-Patient-readPatient .live-responses-table tbody .response-col_description'); return b && b.innerText",
            json!([]),
        )
        .await;
    assert_eq!(status, "200", "{body}");
    assert!(
        body.as_str().unwrap_or_default().contains("Quetzal"),
        "{body}"
    );

    driver
        .script(
            "document.querySelector('#operations-Patient-readPatient .live-responses-table').scrollIntoView()",
            json!([]),
        )
        .await;
    // The screenshot (W3C WebDriver section 17.1): a PNG of the page as the developer sees it.
    let shot = driver.call("GET", "/screenshot", Value::Null).await;
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot.as_str().expect("base64 PNG"),
    )
    .expect("base64");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    std::fs::write(dir.join("explorer.png"), &png).expect("screenshot written");
    driver.call("DELETE", "", Value::Null).await;
}

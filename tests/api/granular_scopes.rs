//! Granular SMART scopes (scopes-and-launch-context.html#finer-grained-resource-constraints-using-search-parameters):
//! a client registered with `system/Observation.crs?category=…|vital-signs` sees, counts, reads,
//! includes and writes only vital-sign Observations, whatever the search asks.

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, heart_rate, patient, with};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn lab(patient_id: &str) -> Value {
    with(
        heart_rate(patient_id, 1.0),
        "category",
        json!([{"coding": [{"system": CATEGORY, "code": "laboratory"}]}]),
    )
}

/// A token of a client registered (by the admin) with exactly `scope`.
async fn token_with_scope(app: &TestApp, scope: &str) -> String {
    crate::common::client_token(app, &json!({"role": "admin", "scope": scope})).await
}

fn ids(bundle: &Value, ty: &str) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["resource"]["resourceType"] == ty)
                .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn granular_scopes_narrow_every_interaction(app: TestApp) {
    let p1 = app.create(&patient("Granular")).await;
    let p2 = app.create(&patient("Other")).await;
    let vital1 = app.create(&heart_rate(&p1, 70.0)).await;
    let lab1 = app.create(&lab(&p1)).await;
    let vital2 = app.create(&heart_rate(&p2, 80.0)).await;
    let lab2 = app.create(&lab(&p2)).await;

    let token = token_with_scope(
        &app,
        &format!("system/Observation.crs?category={CATEGORY}|vital-signs system/Patient.rs"),
    )
    .await;
    let get = |path: String| {
        // `?…` is a system search on the base itself.
        let url = match path.strip_prefix('?') {
            Some(q) => format!("{}?{q}", app.base),
            None => app.url(&path),
        };
        let req = reqwest::Client::new().get(url).bearer_auth(&token);
        app.send(req)
    };

    // Search: the page and the total hold only what the scope matches.
    let r = get("Observation?_total=accurate".into()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        ids(&r.json(), "Observation"),
        sorted(vec![vital1.clone(), vital2.clone()])
    );
    assert_eq!(r.json()["total"], 2);
    let r = get(format!("Observation?patient={p1}&category=laboratory")).await;
    assert_eq!(ids(&r.json(), "Observation"), Vec::<String>::new());
    let r = get(format!("Observation?patient={p1}")).await;
    assert_eq!(ids(&r.json(), "Observation"), vec![vital1.clone()]);

    // Reads: outside the scope is answered like a missing resource.
    assert_eq!(get(format!("Observation/{vital1}")).await.status, 200);
    assert_eq!(get(format!("Observation/{lab1}")).await.status, 404);
    assert_eq!(
        get(format!("Observation/{lab1}/_history/1")).await.status,
        404
    );
    assert_eq!(
        get(format!("Observation/{lab2}/_history")).await.status,
        404
    );

    // `_has` and `_revinclude` look only at Observations within the scope.
    let r = get("Patient?_has:Observation:subject:category=laboratory".into()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r.json(), "Patient"), Vec::<String>::new());
    let r = get("Patient?_has:Observation:subject:category=vital-signs".into()).await;
    assert_eq!(
        ids(&r.json(), "Patient"),
        sorted(vec![p1.clone(), p2.clone()])
    );
    let r = get(format!("Patient?_id={p1}&_revinclude=Observation:subject")).await;
    assert_eq!(ids(&r.json(), "Observation"), vec![vital1.clone()]);
    // A system search applies each type's narrowing.
    let r = get("?_type=Observation,Patient".into()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        ids(&r.json(), "Observation"),
        sorted(vec![vital1.clone(), vital2.clone()])
    );
    assert_eq!(
        ids(&r.json(), "Patient"),
        sorted(vec![p1.clone(), p2.clone()])
    );

    // Type history cannot be narrowed version by version: refused.
    assert_eq!(get("Observation/_history".into()).await.status, 403);
    assert_eq!(get("Patient/_history".into()).await.status, 200);

    // Writes: a new resource must be within the scope.
    let post = |body: Value| {
        let req = reqwest::Client::new()
            .post(app.url("Observation"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        app.send(req)
    };
    assert_eq!(post(heart_rate(&p1, 71.0)).await.status, 201);
    let r = post(lab(&p1)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // No update permission at all in the scope.
    let r = app
        .send(
            reqwest::Client::new()
                .put(app.url(&format!("Observation/{vital1}")))
                .bearer_auth(&token)
                .header("content-type", "application/fhir+json")
                .body(with(heart_rate(&p1, 72.0), "id", json!(vital1)).to_string()),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // An update scope that reaches vital signs only: a vital sign cannot become a lab result.
    let updater = token_with_scope(
        &app,
        &format!("system/Observation.rus?category={CATEGORY}|vital-signs"),
    )
    .await;
    let put = |id: &str, body: Value| {
        let req = reqwest::Client::new()
            .put(app.url(&format!("Observation/{id}")))
            .bearer_auth(&updater)
            .header("content-type", "application/fhir+json")
            .body(with(body, "id", json!(id)).to_string());
        app.send(req)
    };
    assert_eq!(put(&vital2, heart_rate(&p2, 81.0)).await.status, 200);
    let r = put(&vital2, lab(&p2)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(put(&lab2, heart_rate(&p2, 1.0)).await.status, 404);
    let r = app.get(&format!("Observation/{lab2}")).await;
    assert_eq!(r.json()["category"][0]["coding"][0]["code"], "laboratory");

    // A query this server cannot apply grants nothing rather than everything.
    let odd = token_with_scope(&app, "system/Observation.rs?no-such-param=1").await;
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("Observation"))
                .bearer_auth(&odd),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r.json(), "Observation"), Vec::<String>::new());
}
both!(granular_scopes_narrow_every_interaction);

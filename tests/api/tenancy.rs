//! Roles and tenancy (issue 4, items 4 and 5): every role × every interaction × a resource of
//! its own tenant and one of another tenant, asserting allowed or denied. Another tenant's
//! resource is answered like a missing one (404), and searches neither return nor count it.
//!
//! The tenant tree: distributors `d1` and `d2`, with customers (clinics) `c1` under `d1` and `c2`
//! under `d2`. Each clinic has a patient, a device, an Observation, an Invoice and a
//! PractitionerRole. Clients of each role are registered through `POST /auth/clients` and get
//! their tokens with client credentials, as real clients do; the patient role's token comes from
//! a patient-facing app through the login page and the authorization code flow.

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, patient};

/// What each role may do on each type, as issue 4 and DESIGN.md "Tenancy" describe it
/// (written out here, not taken from the server's table).
const GRANTS: &[(&str, [(&str, &str); 6])] = &[
    (
        "admin",
        [
            ("Patient", "cruds"),
            ("Observation", "cruds"),
            ("Device", "cruds"),
            ("Invoice", "cruds"),
            ("Organization", "cruds"),
            ("PractitionerRole", "cruds"),
        ],
    ),
    (
        "distributor",
        [
            ("Patient", ""),
            ("Observation", ""),
            ("Device", "cruds"),
            ("Invoice", "rs"),
            ("Organization", "cruds"),
            ("PractitionerRole", ""),
        ],
    ),
    (
        "distributor-user",
        [
            ("Patient", ""),
            ("Observation", ""),
            ("Device", "rus"),
            ("Invoice", ""),
            ("Organization", "rs"),
            ("PractitionerRole", ""),
        ],
    ),
    (
        "customer",
        [
            ("Patient", "cruds"),
            ("Observation", "cruds"),
            ("Device", "cruds"),
            ("Invoice", "rs"),
            ("Organization", "rus"),
            ("PractitionerRole", "cruds"),
        ],
    ),
    (
        "customer-user",
        [
            ("Patient", "cruds"),
            ("Observation", "cruds"),
            ("Device", "rus"),
            ("Invoice", ""),
            ("Organization", "rs"),
            ("PractitionerRole", "rs"),
        ],
    ),
    // A patient-facing app of clinic c1's patient, with `patient/*.rs`: the patient's own
    // compartment, read-only; nothing outside it, even in the patient's own clinic.
    (
        "patient",
        [
            ("Patient", "rs"),
            ("Observation", "rs"),
            ("Device", ""),
            ("Invoice", ""),
            ("Organization", ""),
            ("PractitionerRole", ""),
        ],
    ),
];

/// The organization a role's client acts for: the clinic roles act for `c1`, the distributor
/// roles for `d1`, whose customer `c1` is.
fn org_of(role: &str) -> Option<&'static str> {
    match role {
        "admin" => None,
        "distributor" | "distributor-user" => Some("d1"),
        _ => Some("c1"),
    }
}

fn org_ref(id: &str) -> Value {
    json!({"reference": format!("Organization/{id}")})
}

/// A resource of `ty` belonging to clinic `c` (`c1` or `c2`), without id.
fn resource(ty: &str, c: &str) -> Value {
    let distributor = if c == "c1" { "d1" } else { "d2" };
    match ty {
        "Patient" => {
            let mut p = patient(&format!("Tenant-{c}"));
            p["managingOrganization"] = org_ref(c);
            p
        }
        "Observation" => json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/p-{c}")},
            "device": {"reference": format!("Device/dev-{c}")},
            "valueQuantity": {"value": 61, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        }),
        "Device" => json!({"resourceType": "Device", "status": "active", "owner": org_ref(c)}),
        "Invoice" => {
            json!({"resourceType": "Invoice", "status": "issued", "recipient": org_ref(c)})
        }
        "Organization" => json!({
            "resourceType": "Organization",
            "name": format!("Clinic under {distributor}"),
            "partOf": org_ref(distributor)
        }),
        "PractitionerRole" => {
            json!({"resourceType": "PractitionerRole", "organization": org_ref(c)})
        }
        other => panic!("no fixture for {other}"),
    }
}

/// The id of the fixture of `ty` for clinic `c`.
fn fixture_id(ty: &str, c: &str) -> String {
    match ty {
        "Patient" => format!("p-{c}"),
        "Observation" => format!("obs-{c}"),
        "Device" => format!("dev-{c}"),
        "Invoice" => format!("inv-{c}"),
        "Organization" => c.to_owned(),
        _ => format!("pr-{c}"),
    }
}

fn with_id(mut v: Value, id: &str) -> Value {
    v["id"] = json!(id);
    v
}

/// Creates the tenant tree and each clinic's resources as the admin.
async fn seed(app: &TestApp) {
    for (id, part_of) in [
        ("d1", None),
        ("d2", None),
        ("c1", Some("d1")),
        ("c2", Some("d2")),
    ] {
        crate::common::put_organization(app, id, part_of).await;
    }
    for c in ["c1", "c2"] {
        for ty in [
            "Patient",
            "Device",
            "Observation",
            "Invoice",
            "PractitionerRole",
        ] {
            let id = fixture_id(ty, c);
            let r = app
                .put(&format!("{ty}/{id}"), &with_id(resource(ty, c), &id))
                .await;
            assert_eq!(r.status, 201, "{ty}/{id}: {}", r.text);
        }
    }
}

/// Registers a client of `role` through the admin API and returns an access token for it.
pub async fn role_token(app: &TestApp, role: &str, org: Option<&str>) -> String {
    if role == "patient" {
        let org = org.expect("a patient's clinic");
        return crate::common::patient_app_token(app, org, &fixture_id("Patient", org)).await;
    }
    let mut body = json!({"role": role});
    if let Some(o) = org {
        body["organization"] = json!(o);
    }
    crate::common::client_token(app, &body).await
}

/// A request as `token`.
async fn as_role(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> crate::common::Resp {
    let mut req = reqwest::Client::new()
        .request(method, app.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    app.send(req).await
}

async fn authorization_matrix(app: TestApp) {
    seed(&app).await;
    use reqwest::Method as M;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (role, grants) in GRANTS {
        let token = role_token(&app, role, org_of(role)).await;
        for (ty, perms) in grants {
            for (side, c) in [("own", "c1"), ("other", "c2")] {
                let visible = *role == "admin" || side == "own";
                let may = |letter: char| perms.contains(letter);
                let id = fixture_id(ty, c);
                let mut expect = |what: String, got: u16, want: u16, text: &str| {
                    checked += 1;
                    if got != want {
                        failures.push(format!(
                            "{role} {what} {ty} ({side}): got {got}, want {want}: {}",
                            text.chars().take(200).collect::<String>()
                        ));
                    }
                };
                let seen = |ok: u16| if visible { ok } else { 404 };

                let r = as_role(&app, &token, M::GET, &format!("{ty}/{id}"), None).await;
                expect(
                    "read".into(),
                    r.status,
                    if may('r') { seen(200) } else { 403 },
                    &r.text,
                );
                let r = as_role(&app, &token, M::GET, &format!("{ty}/{id}/_history/1"), None).await;
                expect(
                    "vread".into(),
                    r.status,
                    if may('r') { seen(200) } else { 403 },
                    &r.text,
                );
                let r = as_role(&app, &token, M::GET, &format!("{ty}/{id}/_history"), None).await;
                expect(
                    "history".into(),
                    r.status,
                    if may('r') { seen(200) } else { 403 },
                    &r.text,
                );

                let r = as_role(
                    &app,
                    &token,
                    M::GET,
                    &format!("{ty}?_id={id}&_total=accurate"),
                    None,
                )
                .await;
                expect(
                    "search".into(),
                    r.status,
                    if may('s') { 200 } else { 403 },
                    &r.text,
                );
                if r.status == 200 {
                    let total = r.json()["total"].as_i64().unwrap_or(-1);
                    expect(
                        "search total".into(),
                        total as u16,
                        u16::from(visible),
                        &r.text,
                    );
                }

                // Update with the same content: the owner stays.
                let body = with_id(resource(ty, c), &id);
                let r = as_role(&app, &token, M::PUT, &format!("{ty}/{id}"), Some(&body)).await;
                expect(
                    "update".into(),
                    r.status,
                    if may('u') { seen(200) } else { 403 },
                    &r.text,
                );

                // Create one more: it must name its own tenant, or (an Observation) it is
                // filed under the writer's organization, never under the other's.
                let r = as_role(&app, &token, M::POST, ty, Some(&resource(ty, c))).await;
                let want = match (may('c'), visible, *ty) {
                    (false, _, _) => 403,
                    (true, true, _) | (true, false, "Observation") => 201,
                    (true, false, _) => 403,
                };
                expect("create".into(), r.status, want, &r.text);
                if r.status == 201 && !visible {
                    let owner = r.json()["meta"]["tag"]
                        .as_array()
                        .and_then(|tags| tags.iter().find(|t| t["system"] == OWNER_SYSTEM))
                        .map(|t| t["code"].clone());
                    expect(
                        format!("owner of created ({owner:?})"),
                        u16::from(owner == Some(json!(org_of(role).unwrap_or("")))),
                        1,
                        &r.text,
                    );
                }

                // Delete a fresh resource of that tenant: another tenant's is answered like a
                // missing one (204, nothing deleted).
                let victim = app.create(&resource(ty, c)).await;
                let r = as_role(&app, &token, M::DELETE, &format!("{ty}/{victim}"), None).await;
                expect(
                    "delete".into(),
                    r.status,
                    if may('d') { 204 } else { 403 },
                    &r.text,
                );
                let after = app.get(&format!("{ty}/{victim}")).await.status;
                let gone = may('d') && visible;
                expect("deleted?".into(), after, if gone { 410 } else { 200 }, "");
            }
        }
    }
    assert!(checked > 400, "{checked} checks");
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
both!(authorization_matrix);

const OWNER_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/owner";

/// Searches are narrowed in the query itself: pages, `_total`, `_summary=count`, includes,
/// chains, `_has`, `$lastn`, `$everything`, type history and Bundles never show another
/// tenant's resources.
async fn searches_never_show_other_tenants(app: TestApp) {
    seed(&app).await;
    let clinic = role_token(&app, "customer", Some("c1")).await;
    let get = |path: String| {
        let app = &app;
        let clinic = &clinic;
        async move {
            let r = as_role(app, clinic, reqwest::Method::GET, &path, None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            r.json()
        }
    };
    let ids = |b: &Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .map(|x| {
                        format!(
                            "{}/{}",
                            x["resource"]["resourceType"].as_str().unwrap_or(""),
                            x["resource"]["id"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let b = get("Observation?_total=accurate".into()).await;
    assert_eq!(
        (b["total"].as_i64(), ids(&b)),
        (Some(1), vec!["Observation/obs-c1".to_owned()])
    );
    let b = get("Observation?_summary=count".into()).await;
    assert_eq!(b["total"], 1);
    let b = get(
        "Observation?code=8867-4&_include=Observation:subject&_include=Observation:device".into(),
    )
    .await;
    assert_eq!(
        ids(&b),
        ["Device/dev-c1", "Observation/obs-c1", "Patient/p-c1"]
    );
    // An admin's Observation of c1's patient that points at c2's device: the device is not
    // included for c1.
    let mixed = app
        .create(&json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/p-c1"}, "device": {"reference": "Device/dev-c2"}
        }))
        .await;
    let b = get("Observation?code=29463-7&_include=Observation:device".into()).await;
    assert_eq!(ids(&b), [format!("Observation/{mixed}")]);
    let b = get("Patient?_revinclude=Observation:subject&_total=accurate".into()).await;
    assert_eq!(b["total"], 1);
    assert_eq!(
        ids(&b),
        [
            format!("Observation/{mixed}"),
            "Observation/obs-c1".into(),
            "Patient/p-c1".into()
        ]
    );
    // Chains and _has look only at what c1 may see.
    let b = get("Observation?subject:Patient.family=Tenant-c2".into()).await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let b = get("Observation?subject:Patient.family=Tenant-c1&code=8867-4".into()).await;
    assert_eq!(ids(&b), ["Observation/obs-c1"]);
    let b = get("Device?_has:Observation:device:code=8867-4".into()).await;
    assert_eq!(ids(&b), ["Device/dev-c1"]);
    // An admin's Observation for c2's patient made by c1's device: c1 must not learn that c2's
    // patient has readings through `_has`.
    app.create(&json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "subject": {"reference": "Patient/p-c2"}, "device": {"reference": "Device/dev-c1"}
    }))
    .await;
    let b = get("Device?_has:Observation:device:code=8310-5".into()).await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let b = get("Observation/$lastn?patient=p-c2".into()).await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let b = get("Observation/$lastn?code=8867-4".into()).await;
    assert_eq!(ids(&b), ["Observation/obs-c1"]);
    let r = as_role(
        &app,
        &clinic,
        reqwest::Method::GET,
        "Patient/p-c2/$everything",
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let b = get("Patient/p-c1/$everything".into()).await;
    assert!(!ids(&b).iter().any(|i| i.ends_with("-c2")), "{:?}", ids(&b));
    let b = get("Observation/_history".into()).await;
    assert!(b["total"].as_i64().is_some_and(|t| t >= 1));
    for e in b["entry"].as_array().into_iter().flatten() {
        assert_ne!(e["resource"]["subject"]["reference"], "Patient/p-c2", "{e}");
    }
    // Conditional create does not match (or reveal) another tenant's resource.
    let r = app
        .send(
            reqwest::Client::new()
                .post(app.url("Patient"))
                .bearer_auth(&clinic)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=urn:vb:test|Tenant-c2")
                .body(resource("Patient", "c1").to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_ne!(r.json()["id"], "p-c2");
    // Bundles are checked per entry.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/p-c1"}},
        {"request": {"method": "GET", "url": "Patient/p-c2"}},
        {"request": {"method": "GET", "url": "Patient?identifier=urn:vb:test|Tenant-c2"}},
        {"request": {"method": "DELETE", "url": "Patient/p-c2"}}
    ]});
    let r = as_role(&app, &clinic, reqwest::Method::POST, "", Some(&bundle)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    let statuses: Vec<&str> = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or(""))
        .collect();
    assert!(
        statuses[0].starts_with("200") && statuses[1].starts_with("404"),
        "{statuses:?}"
    );
    let found = &b["entry"][2]["resource"];
    assert!(
        found["entry"].as_array().is_none_or(|e| e
            .iter()
            .all(|x| x["resource"]["managingOrganization"]["reference"] == "Organization/c1")),
        "{found}"
    );
    assert_eq!(
        app.get("Patient/p-c2").await.status,
        200,
        "c2's patient is still there"
    );
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PUT", "url": "Patient/p-c2"}, "resource": with_id(resource("Patient", "c1"), "p-c2")}
    ]});
    let r = as_role(&app, &clinic, reqwest::Method::POST, "", Some(&tx)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(
        app.get("Patient/p-c2").await.json()["managingOrganization"]["reference"],
        "Organization/c2"
    );
}
both!(searches_never_show_other_tenants);

/// A distributor sees its customers' organizations and adds new ones under itself only; the
/// customers it adds become part of its tenancy at once.
async fn distributors_manage_their_customers(app: TestApp) {
    seed(&app).await;
    let dist = role_token(&app, "distributor", Some("d1")).await;
    let r = as_role(
        &app,
        &dist,
        reqwest::Method::GET,
        "Organization?_total=accurate",
        None,
    )
    .await;
    let b = r.json();
    assert_eq!(b["total"], 2, "d1 and c1: {b}");
    let new =
        json!({"resourceType": "Organization", "name": "New clinic", "partOf": org_ref("d1")});
    let r = as_role(
        &app,
        &dist,
        reqwest::Method::POST,
        "Organization",
        Some(&new),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let c3 = r.json()["id"].as_str().expect("id").to_owned();
    let hub = json!({"resourceType": "Device", "status": "active", "owner": org_ref(&c3)});
    let r = as_role(&app, &dist, reqwest::Method::POST, "Device", Some(&hub)).await;
    assert_eq!(r.status, 201, "a device for the new customer: {}", r.text);
    let r = as_role(
        &app,
        &dist,
        reqwest::Method::GET,
        "Device?_total=accurate",
        None,
    )
    .await;
    assert_eq!(r.json()["total"], 2, "dev-c1 and the new hub: {}", r.text);
    // The new clinic's own client sees the hub, and not the distributor's other customer.
    let clinic = role_token(&app, "customer", Some(&c3)).await;
    let r = as_role(
        &app,
        &clinic,
        reqwest::Method::GET,
        "Device?_total=accurate",
        None,
    )
    .await;
    assert_eq!(r.json()["total"], 1, "{}", r.text);
    let r = as_role(&app, &clinic, reqwest::Method::GET, "Organization/c1", None).await;
    assert_eq!(r.status, 404);
    // Moving a customer to another distributor is not the distributor's to do.
    let moved = json!({"resourceType": "Organization", "id": "c1", "name": "Org c1", "partOf": org_ref("d2")});
    let r = as_role(
        &app,
        &dist,
        reqwest::Method::PUT,
        "Organization/c1",
        Some(&moved),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Client management is for admins.
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/clients", app.origin()))
                .bearer_auth(&dist)
                .json(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    for bad in [
        json!({"role": "customer"}),
        json!({"role": "admin", "organization": "c1"}),
        json!({"role": "patient", "organization": "c1"}),
        json!({"role": "customer", "organization": "c1", "scope": "user/*.cruds"}),
        json!({"role": "owner", "organization": "c1"}),
    ] {
        let r = app
            .send(
                app.client
                    .post(format!("{}/auth/clients", app.origin()))
                    .json(&bad),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let r = app
        .send(app.client.get(format!("{}/auth/clients", app.origin())))
        .await;
    assert_eq!(r.status, 200);
    // Neither secrets nor their hashes are listed.
    assert!(
        !r.text.contains("\"client_secret\"") && !r.text.contains("argon2"),
        "{}",
        r.text
    );
    assert!(r.json()["clients"].as_array().is_some_and(|c| c.len() >= 3));
}
both!(distributors_manage_their_customers);

//! Sign-in accounts managed within the tenancy (issue 4, "Roles and tenancy"): a clinic
//! (customer) manages its staff and its patients' accounts, a distributor its own staff and its
//! customers' clinic accounts; nobody sees or removes another tenant's users.

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, client_token, patient, put_organization};

async fn users_as(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", app.origin()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = app.send(req).await;
    let v = serde_json::from_str(&r.text).unwrap_or(Value::Null);
    (r.status, v)
}

fn user(name: &str, role: &str, org: &str) -> Value {
    json!({"username": name, "password": "a long enough password", "role": role, "organization": org})
}

fn usernames(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["users"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u["username"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn clinics_and_distributors_manage_their_own_users(app: TestApp) {
    use reqwest::Method as M;
    put_organization(&app, "um-d1", None).await;
    put_organization(&app, "um-d2", None).await;
    put_organization(&app, "um-c1", Some("um-d1")).await;
    put_organization(&app, "um-c2", Some("um-d2")).await;
    for c in ["um-c1", "um-c2"] {
        let mut p = patient(&format!("Account-{c}"));
        p["id"] = json!(format!("p-{c}"));
        p["managingOrganization"] = json!({"reference": format!("Organization/{c}")});
        assert_eq!(app.put(&format!("Patient/p-{c}"), &p).await.status, 201);
    }
    // Another clinic's nurse, made by the admin.
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/users", app.origin()))
                .json(&user("nurse-c2", "customer-user", "um-c2")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let clinic = client_token(&app, &json!({"role": "customer", "organization": "um-c1"})).await;
    let post = |body: Value| users_as(&app, &clinic, M::POST, "/auth/users", Some(body));
    assert_eq!(
        post(user("nurse-c1", "customer-user", "um-c1")).await.0,
        201
    );
    // Not for another clinic, not a role above its staff.
    assert_eq!(post(user("nurse-x", "customer-user", "um-c2")).await.0, 403);
    assert_eq!(post(user("boss-c1", "customer", "um-c1")).await.0, 403);
    assert_eq!(
        post(json!({"username": "root2", "password": "a long enough password", "role": "admin"}))
            .await
            .0,
        403
    );
    assert_eq!(
        post(user("dist-x", "distributor-user", "um-c1")).await.0,
        403
    );
    // Its patients' accounts, for its own patients only.
    let mut mine = user("patient-c1", "patient", "um-c1");
    mine["fhirUser"] = json!("Patient/p-um-c1");
    assert_eq!(post(mine).await.0, 201);
    let mut theirs = user("patient-c2", "patient", "um-c1");
    theirs["fhirUser"] = json!("Patient/p-um-c2");
    let (status, body) = post(theirs).await;
    assert_eq!(status, 400, "{body}");

    let (status, list) = users_as(&app, &clinic, M::GET, "/auth/users", None).await;
    assert_eq!(status, 200);
    assert_eq!(usernames(&list), ["nurse-c1", "patient-c1"]);
    // Another clinic's user is as missing as an unknown one.
    assert_eq!(
        users_as(&app, &clinic, M::DELETE, "/auth/users/nurse-c2", None)
            .await
            .0,
        404
    );
    assert_eq!(
        users_as(&app, &clinic, M::DELETE, "/auth/users/nurse-c1", None)
            .await
            .0,
        204
    );

    // Clinic staff manage no one.
    let staff = client_token(
        &app,
        &json!({"role": "customer-user", "organization": "um-c1"}),
    )
    .await;
    assert_eq!(
        users_as(&app, &staff, M::GET, "/auth/users", None).await.0,
        403
    );
    assert_eq!(
        users_as(
            &app,
            &staff,
            M::POST,
            "/auth/users",
            Some(user("nurse-y", "customer-user", "um-c1"))
        )
        .await
        .0,
        403
    );

    // A distributor: its own staff and its customers' clinic accounts.
    let dist = client_token(
        &app,
        &json!({"role": "distributor", "organization": "um-d1"}),
    )
    .await;
    let post = |body: Value| users_as(&app, &dist, M::POST, "/auth/users", Some(body));
    assert_eq!(
        post(user("tech-d1", "distributor-user", "um-d1")).await.0,
        201
    );
    assert_eq!(post(user("boss-c1", "customer", "um-c1")).await.0, 201);
    assert_eq!(post(user("boss-c2", "customer", "um-c2")).await.0, 403);
    assert_eq!(
        post(user("tech-d2", "distributor-user", "um-d2")).await.0,
        403
    );
    let (_, list) = users_as(&app, &dist, M::GET, "/auth/users", None).await;
    assert_eq!(usernames(&list), ["boss-c1", "tech-d1"]);
    // The admin sees everyone.
    let r = app
        .send(app.client.get(format!("{}/auth/users", app.origin())))
        .await;
    assert_eq!(
        usernames(&r.json()),
        ["boss-c1", "nurse-c2", "patient-c1", "tech-d1"]
    );
}

both!(clinics_and_distributors_manage_their_own_users);

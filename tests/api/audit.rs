//! The audit trail (issue 4, item 7): every read, search, write, login and token request is
//! recorded — who, what (type and id, never content), when, outcome — and admins search it as
//! FHIR AuditEvent. Rows are written by a background task, so the checks poll briefly.

use serde_json::{Value, json};

use crate::both;
use crate::common::{
    ADMIN_ID, Backend, TestApp, client_token, fresh_database, patient, patient_app_token,
    put_organization, spawn_on,
};

/// The AuditEvents of a search, once at least `min` are there (the writer is asynchronous).
async fn events(app: &TestApp, query: &str, min: usize) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = app.get(&format!("AuditEvent?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        last = r.json();
        let entries: Vec<Value> = last["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["resource"].clone())
            .collect();
        if entries.len() >= min {
            return entries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {min} AuditEvents for {query}: {last}");
}

fn subtypes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["subtype"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn every_request_is_audited_and_admins_search_the_trail(app: TestApp) {
    put_organization(&app, "ac1", None).await;
    // Writes and reads of one patient, as the admin.
    let mut p = patient("Confidential-Family");
    p["managingOrganization"] = json!({"reference": "Organization/ac1"});
    let id = app.create(&p).await;
    let path = format!("Patient/{id}");
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(
        app.get("Patient?family=Confidential-Family").await.status,
        200
    );
    let mut v = app.get(&path).await.json();
    v["active"] = json!(true);
    assert_eq!(app.put(&path, &v).await.status, 200);
    assert_eq!(app.delete(&path).await.status, 204);

    // Newest first: delete, update, read, read, create.
    let trail = events(&app, &format!("entity={path}"), 5).await;
    assert_eq!(
        subtypes(&trail),
        ["delete", "update", "read", "read", "create"]
    );
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions, ["D", "U", "R", "R", "C"]);
    for e in &trail {
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["outcome"], "0", "{e}");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], ADMIN_ID);
        assert_eq!(e["agent"][0]["role"][0]["coding"][0]["code"], "admin");
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(e["entity"][0]["what"]["reference"], path);
        assert!(e["recorded"].as_str().is_some_and(|r| r.starts_with("20")));
        // Each one is readable by itself, in its one version.
        let one = app
            .get(&format!("AuditEvent/{}", e["id"].as_str().expect("id")))
            .await;
        assert_eq!(one.status, 200);
        assert_eq!(one.json(), *e);
    }
    // The search was recorded by its type, never by its values.
    let searches = events(&app, "subtype=search-type&_sort=date", 1).await;
    assert_eq!(searches[0]["entity"][0]["what"]["type"], "Patient");
    let everything = app.get("AuditEvent?_count=1000").await;
    assert!(
        !everything.text.contains("Confidential-Family"),
        "search values leaked into the trail"
    );

    // A client id PostgreSQL could not store as text (NUL) does not stop the trail: what
    // follows is still recorded.
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&client_id=evil%00name&client_secret=x"),
        )
        .await;
    assert_eq!(r.status, 401);
    let evil = events(&app, "agent-name=evilname", 1).await;
    assert_eq!(evil[0]["outcome"], "4");

    // A refused token and a refused client are recorded as failures.
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url(&path))
                .bearer_auth("not-a-token"),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .basic_auth("no-such-client", Some("guess"))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    assert_eq!(r.status, 401);
    let failed = events(&app, &format!("outcome=4&entity={path}"), 1).await;
    assert_eq!(failed[0]["agent"][0]["who"]["display"], "unauthenticated");
    assert_eq!(
        failed[0]["outcomeDesc"]
            .as_str()
            .map(|d| d.starts_with("HTTP 401")),
        Some(true)
    );
    let tokens = events(&app, "type=110114&outcome=4&agent-name=no-such-client", 1).await;
    assert_eq!(
        tokens[0]["agent"][0]["who"]["identifier"]["value"],
        "no-such-client"
    );
    assert_eq!(tokens[0]["subtype"][0]["code"], "token");

    // A clinic's client: its requests carry its role and organization; it cannot read the trail.
    let clinic = client_token(&app, &json!({"role": "customer", "organization": "ac1"})).await;
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("Patient"))
                .bearer_auth(&clinic),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("AuditEvent"))
                .bearer_auth(&clinic),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let theirs = events(&app, "agent=Organization/ac1&agent-role=customer", 2).await;
    assert!(
        theirs
            .iter()
            .all(|e| e["agent"][1]["who"]["reference"] == "Organization/ac1")
    );
    // Successful token issue names the client that got it.
    let issued = events(&app, "subtype=token&outcome=0&agent-role=customer", 1).await;
    assert_eq!(issued[0]["type"]["code"], "110114");

    // A patient's sign-in on the login page.
    let mut me = patient("Audited-Patient");
    me["id"] = json!("audited-patient");
    me["managingOrganization"] = json!({"reference": "Organization/ac1"});
    assert_eq!(app.put("Patient/audited-patient", &me).await.status, 201);
    patient_app_token(&app, "ac1", "audited-patient").await;
    let logins = events(&app, "subtype=login&outcome=0", 1).await;
    assert!(
        logins[0]["agent"][0]["altId"]
            .as_str()
            .is_some_and(|u| u.starts_with("patient-"))
    );

    // The trail is append-only.
    let r = app
        .post("AuditEvent", &json!({"resourceType": "AuditEvent"}))
        .await;
    assert_eq!(r.status, 405);
    let first = &trail[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(app.delete(&format!("AuditEvent/{first}")).await.status, 405);
}

/// Dates, paging and totals work like other searches; pages do not shift as rows are added.
async fn the_trail_pages_by_date(app: TestApp) {
    for _ in 0..5 {
        assert_eq!(app.get("Patient?_count=1").await.status, 200);
    }
    let all = events(&app, "subtype=search-type", 5).await;
    let r = app
        .get("AuditEvent?subtype=search-type&_count=2&_total=accurate&_sort=date")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page1 = r.json();
    assert!(page1["total"].as_i64().is_some_and(|t| t >= 5), "{page1}");
    let next = page1["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("next link")
        .to_owned();
    // New rows arrive meanwhile (this very search is one).
    assert_eq!(app.get("Patient?_count=1").await.status, 200);
    let page2 = app.send(app.client.get(&next)).await.json();
    let ids = |b: &Value| -> Vec<i64> {
        b["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["resource"]["id"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (ids(&page1), ids(&page2));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    assert!(a[1] < b[0], "oldest first, no overlap: {a:?} {b:?}");
    assert!(!all.is_empty());
    let none = app.get("AuditEvent?date=lt2000-01-01").await.json();
    assert!(
        none["entry"].as_array().is_none_or(|e| e.is_empty()),
        "{none}"
    );
    let today = app
        .get("AuditEvent?date=ge2020-01-01&_count=1")
        .await
        .json();
    assert_eq!(today["entry"].as_array().map(Vec::len), Some(1));
    let bad = app.get("AuditEvent?date=yesterday").await;
    assert_eq!(bad.status, 400);
}

both!(every_request_is_audited_and_admins_search_the_trail);
both!(the_trail_pages_by_date);

/// Audit rows as `|`-joined text, oldest first, read from the database behind the server.
async fn trail_rows(app: &TestApp) -> Vec<String> {
    use sqlx::Connection as _;
    let sql = "select id || '|' || recorded || '|' || kind || '|' || subtype || '|' || action \
               || '|' || outcome || '|' || status || '|' || coalesce(client_id, '-') || '|' \
               || coalesce(subject, '-') || '|' || coalesce(role, '-') || '|' \
               || coalesce(organization, '-') || '|' || coalesce(issuer, '-') || '|' \
               || coalesce(entity_type, '-') || '|' || coalesce(entity_id, '-') || '|' \
               || coalesce(address, '-') || '|' || coalesce(request_id, '-') \
               from audit_event where id <= 4 order by id";
    match app.backend {
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.database_url)
                .await
                .expect("connect");
            sqlx::query_scalar(sql).fetch_all(&mut c).await
        }
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .expect("connect");
            sqlx::query_scalar(sql).fetch_all(&mut c).await
        }
    }
    .expect("audit rows")
}

/// The trail written by builds before `0017_audit_narrow.sql` (one wide row per request)
/// survives the upgrade to the narrow rows: every column reads back the same through the
/// `audit_event` view, repeated agents share one dictionary row, and new rows follow the old
/// ids.
async fn an_older_trail_survives_the_upgrade(backend: Backend) {
    use sqlx::Connection as _;
    let url = fresh_database(backend).await;
    const OLD: [&str; 4] = [
        "1|1796000000000000|rest|read|R|0|200|c1|u1|customer|o1|-|Patient|p1|10.0.0.1|req-1",
        "2|1796000000000001|token|token|E|4|401|-|-|-|-|-|-|-|10.0.0.2|req-2",
        "3|1796000000000002|rest|read|R|4|404|c1|u1|customer|o1|-|Observation|o9|10.0.0.1|-",
        "4|1796000000000003|rest|create|C|0|201|c2|u2|customer-user|o1|https://idp.example|Patient|p2|-|req-4",
    ];
    let inserts: Vec<String> = OLD
        .iter()
        .map(|row| {
            let values: Vec<String> = row
                .split('|')
                .enumerate()
                .map(|(i, v)| match (i, v) {
                    (_, "-") => "null".to_owned(),
                    (0 | 1 | 6, v) => v.to_owned(),
                    (_, v) => format!("'{v}'"),
                })
                .collect();
            format!(
                "insert into audit_event (id, recorded, kind, subtype, action, outcome, status, \
                 client_id, subject, role, organization, issuer, entity_type, entity_id, \
                 address, request_id) values ({})",
                values.join(", ")
            )
        })
        .collect();
    macro_rules! before_the_upgrade {
        ($conn:ty, $url:expr, $dir:literal) => {{
            let mut c = <$conn>::connect(&$url).await.expect("connect");
            let mut older = sqlx::migrate!($dir);
            older.migrations = older
                .migrations
                .iter()
                .filter(|m| m.version < 17)
                .cloned()
                .collect::<Vec<_>>()
                .into();
            older.run(&mut c).await.expect("the migrations up to 16");
            for sql in &inserts {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut c)
                    .await
                    .expect(sql);
            }
        }};
    }
    match backend {
        Backend::Postgres => before_the_upgrade!(sqlx::PgConnection, url, "migrations/postgres"),
        Backend::Sqlite => before_the_upgrade!(
            sqlx::SqliteConnection,
            format!("{url}?mode=rwc"),
            "migrations/sqlite"
        ),
    }
    let app = spawn_on(backend, url, |_| {}).await;
    assert_eq!(trail_rows(&app).await, OLD);

    // Read as FHIR, and new rows after the old ones.
    let r = app.get("AuditEvent/4").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["action"], "C");
    let text = r.text.clone();
    assert!(
        text.contains("https://idp.example") || text.contains("u2"),
        "{text}"
    );
    let mut newest = 0;
    for _ in 0..100 {
        let page = events(&app, "_sort=-date&_count=1", 1).await;
        newest = page[0]["id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("numeric id");
        if newest > 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(newest > 4, "new rows follow the old ids: {newest}");
    assert_eq!(trail_rows(&app).await, OLD, "the old rows are unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_trail_survives_the_upgrade_postgres() {
    an_older_trail_survives_the_upgrade(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_trail_survives_the_upgrade_sqlite() {
    an_older_trail_survives_the_upgrade(Backend::Sqlite).await
}

/// On PostgreSQL the trail lives in blocks, one row of `audit_block` per written batch
/// (`0019_audit_blocks.sql`). Searches read across blocks: by entity, newest and oldest first,
/// page by page with stable cursors, by date and by id, and count them all; the `audit_event`
/// view decodes the same rows in SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_spans_blocks_on_postgres() {
    use sqlx::Connection as _;
    let app = crate::common::spawn(Backend::Postgres).await;
    let id = app.create(&patient("Blocked")).await;
    const READS: usize = 7;
    for _ in 0..READS {
        assert_eq!(app.get(&format!("Patient/{id}")).await.status, 200);
        // Longer than the writer gathers (100 ms): one batch, one block, per read.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let query = format!("entity=Patient/{id}&subtype=read");
    let found = events(&app, &query, READS).await;
    let ids: Vec<i64> = found
        .iter()
        .map(|e| e["id"].as_str().expect("id").parse().expect("numeric id"))
        .collect();
    assert_eq!(ids.len(), READS, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    let mut c = sqlx::PgConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let blocks: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select distinct b.first_id from audit_block b where {} order by 1",
        ids.iter()
            .map(|i| format!("({i} between b.first_id and b.last_id)"))
            .collect::<Vec<_>>()
            .join(" or ")
    )))
    .fetch_all(&mut c)
    .await
    .expect("blocks");
    assert!(
        blocks.len() >= 3,
        "the reads span blocks: {blocks:?} {ids:?}"
    );
    let view: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "select id, subtype, entity_id from audit_event where entity_type = 'Patient' \
         and entity_id = $1 and subtype = 'read' order by id desc",
    )
    .bind(&id)
    .fetch_all(&mut c)
    .await
    .expect("the view");
    assert_eq!(
        view.iter().map(|v| v.0).collect::<Vec<_>>(),
        ids,
        "the view decodes the same rows"
    );

    // Pages of two, oldest first, each after the last one shown; with the total.
    let mut url = Some(format!(
        "AuditEvent?{query}&_sort=date&_count=2&_total=accurate"
    ));
    let mut paged = Vec::new();
    while let Some(u) = url.take() {
        let r = if u.starts_with("http") {
            app.send(app.client.get(&u)).await
        } else {
            app.get(&u).await
        };
        assert_eq!(r.status, 200, "{}", r.text);
        let b = r.json();
        assert_eq!(b["total"], READS, "{b}");
        for e in b["entry"].as_array().cloned().unwrap_or_default() {
            paged.push(
                e["resource"]["id"]
                    .as_str()
                    .expect("id")
                    .parse::<i64>()
                    .expect("id"),
            );
        }
        url = b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
    }
    let mut oldest_first = ids.clone();
    oldest_first.reverse();
    assert_eq!(paged, oldest_first);

    // By id, in an older block, and a few ids at once; by date around one row.
    let middle = ids[READS / 2];
    let r = app.get(&format!("AuditEvent/{middle}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let one = r.json();
    assert_eq!(
        one["entity"][0]["what"]["reference"],
        format!("Patient/{id}")
    );
    let some = events(&app, &format!("_id={},{}", ids[0], ids[READS - 1]), 2).await;
    assert_eq!(some.len(), 2);
    let unknown = app.get(&format!("AuditEvent/{}", ids[0] + 1_000_000)).await;
    assert_eq!(unknown.status, 404);
    let at = one["recorded"].as_str().expect("recorded");
    let same_time = events(&app, &format!("{query}&date=ge{at}&date=le{at}"), 1).await;
    assert!(
        same_time.iter().any(|e| e["id"] == one["id"]),
        "{at}: {same_time:?}"
    );
    let earlier = events(&app, &format!("{query}&date=lt{at}"), 1).await;
    assert!(
        earlier
            .iter()
            .all(|e| e["id"].as_str().and_then(|i| i.parse::<i64>().ok()) < Some(middle))
    );
}

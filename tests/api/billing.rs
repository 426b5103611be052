//! Billing (issue 7): the price catalog as ChargeItemDefinitions claiming the catalog-entry
//! profile, checked on write as the monthly run will read them.

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, with};

const PROFILE: &str = "https://vitalbridge.dev/fhir/StructureDefinition/vb-catalog-entry";
const ITEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/billing-item";
const EXT: &str = "https://vitalbridge.dev/fhir/StructureDefinition/";

fn catalog_entry(code: Value, price: Value) -> Value {
    json!({
        "resourceType": "ChargeItemDefinition",
        "meta": {"profile": [PROFILE]},
        "url": "https://clinic-network.example/price/bp-cuff",
        "status": "active",
        "code": {"coding": [code]},
        "propertyGroup": [{"priceComponent": [
            {"type": "base", "amount": price},
            {"type": "tax", "factor": 0.0725}
        ]}],
        "extension": [{"url": format!("{EXT}billing-proration"), "valueCode": "pro-rata"}]
    })
}

/// A catalog entry the run can use is stored; one it could not use is refused with 422 at the
/// element, as the run would read it; a ChargeItemDefinition that does not claim the profile
/// is no catalog entry and is stored as FHIR allows.
async fn catalog_entries_are_checked_as_the_run_reads_them(app: TestApp) {
    let cuff = json!({"system": "urn:iso:std:iso:11073:10101", "code": "528391"});
    let ok = catalog_entry(cuff.clone(), json!({"value": 25.00, "currency": "USD"}));
    let r = app.post("ChargeItemDefinition", &ok).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let hub = catalog_entry(
        json!({"system": ITEM, "code": "hub"}),
        json!({"value": 10, "currency": "EUR"}),
    );
    assert_eq!(app.post("ChargeItemDefinition", &hub).await.status, 201);

    let cases = [
        (
            catalog_entry(cuff.clone(), json!({"value": 25.001, "currency": "USD"})),
            "ChargeItemDefinition.propertyGroup.priceComponent.amount",
        ),
        (
            catalog_entry(
                json!({"system": ITEM, "code": "gadget"}),
                json!({"value": 1, "currency": "USD"}),
            ),
            "ChargeItemDefinition.code",
        ),
        (
            {
                let mut e = ok.clone();
                e["extension"] = json!([{"url": format!("{EXT}billing-invoice-to"), "valueCode": "distributor"}]);
                e
            },
            "ChargeItemDefinition.extension",
        ),
    ];
    for (bad, at) in cases {
        let r = app.post("ChargeItemDefinition", &bad).await;
        assert_eq!(r.status, 422, "{}", r.text);
        let issues = r.outcome_issues();
        assert!(
            issues.iter().any(|i| i["expression"][0] == at),
            "{at}: {}",
            r.text
        );
    }
    // No base price at all: the profile's own constraint says so too.
    let mut no_price = ok.clone();
    no_price["propertyGroup"] = json!([{"priceComponent": [{"type": "tax", "factor": 0.1}]}]);
    let r = app.post("ChargeItemDefinition", &no_price).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("vb-cat-2"), "{}", r.text);

    let mut other = no_price.clone();
    other["meta"] = json!({});
    let r = app.post("ChargeItemDefinition", &other).await;
    assert_eq!(r.status, 201, "not a catalog entry: {}", r.text);

    // The profile is served like any resource.
    let r = app.get("StructureDefinition/vb-catalog-entry").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["type"], "ChargeItemDefinition");
}
both!(catalog_entries_are_checked_as_the_run_reads_them);

const MDC: &str = "urn:iso:std:iso:11073:10101";
const CUFF: &str = "528391";
const SCALE: &str = "528399";

/// Microseconds since the epoch of an RFC 3339 instant.
fn micros(at: &str) -> i64 {
    at.parse::<jiff::Timestamp>()
        .expect("an instant")
        .as_microsecond()
}

/// A price: `code` per month in `currency`, prorated as `proration`, with more extensions.
fn price(code: &str, amount: &str, currency: &str, proration: &str, tax: Option<f64>) -> Value {
    let mut components = vec![json!({"type": "base", "amount": {
        "value": serde_json::from_str::<Value>(amount).expect("a number"), "currency": currency}})];
    if let Some(t) = tax {
        components.push(json!({"type": "tax", "factor": t}));
    }
    json!({
        "resourceType": "ChargeItemDefinition",
        "meta": {"profile": [PROFILE]},
        "url": format!("https://platform.example/price/{code}-{currency}"),
        "status": "active",
        "code": {"coding": [{"system": MDC, "code": code}]},
        "propertyGroup": [{"priceComponent": components}],
        "extension": [{"url": format!("{EXT}billing-proration"), "valueCode": proration}]
    })
}

/// Organization `id` in time zone `tz` (the core `timezone` extension), under `part_of`.
async fn organization(app: &TestApp, id: &str, tz: &str, part_of: Option<&str>) {
    let mut org = json!({
        "resourceType": "Organization", "id": id, "name": format!("Org {id}"),
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": tz}]
    });
    if let Some(p) = part_of {
        org["partOf"] = json!({"reference": format!("Organization/{p}")});
    }
    let r = app.put(&format!("Organization/{id}"), &org).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// A Device whose versions are `(instant, status, owner)`, written through the API and then
/// moved back in time to those instants (the store stamps versions with its clock; the run
/// reads history, so the test sets the clock of history as a month in the past left it).
async fn device(app: &TestApp, code: &str, versions: &[(&str, &str, &str)]) -> String {
    let mut id = String::new();
    for (i, (_, status, owner)) in versions.iter().enumerate() {
        let mut d = json!({
            "resourceType": "Device",
            "status": status,
            "owner": {"reference": format!("Organization/{owner}")},
            "type": {"coding": [{"system": MDC, "code": code}]}
        });
        if i == 0 {
            id = app.create(&d).await;
        } else {
            d["id"] = json!(id);
            let r = app.put(&format!("Device/{id}"), &d).await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
    }
    for (i, (at, _, _)) in versions.iter().enumerate() {
        app.sql(&format!(
            "update resource_history set last_updated = {} \
             where res_type = 'Device' and res_id = '{id}' and version_id = {}",
            micros(at),
            i + 1
        ))
        .await;
    }
    id
}

/// `vitalbridge bill --month {month}` against the app's database: its standard output.
fn bill(app: &TestApp, month: &str) -> String {
    bill_output(app, month).0
}

/// [`bill`]'s standard output and its standard error (progress lines: not a terminal).
fn bill_output(app: &TestApp, month: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args([
            "bill",
            "--month",
            month,
            "--database-url",
            &app.database_url,
        ])
        .output()
        .expect("bill runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    (stdout, stderr)
}

/// The invoices of `org`, oldest first.
async fn invoices(app: &TestApp, org: &str) -> Vec<Value> {
    let r = app
        .get(&format!(
            "Invoice?recipient=Organization/{org}&_sort=_lastUpdated&_count=50"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

fn amount(v: &Value) -> (String, String) {
    (
        v["value"].to_string(),
        v["currency"].as_str().unwrap_or_default().to_owned(),
    )
}

fn usd(s: &str) -> (String, String) {
    (s.to_owned(), "USD".to_owned())
}

/// The customers and devices of February 2024 (29 days): a clinic in New York billed
/// directly, and a clinic in Berlin under a distributor that is invoiced for its cuffs.
struct February {
    moved: String,
    late: String,
    reactivated: String,
}

async fn february(app: &TestApp) -> February {
    organization(app, "ny-clinic", "America/New_York", None).await;
    organization(app, "dist", "UTC", None).await;
    organization(app, "berlin-clinic", "Europe/Berlin", Some("dist")).await;
    app.create(&price(CUFF, "25.00", "USD", "any-day", Some(0.0725)))
        .await;
    app.create(&price(SCALE, "29.00", "USD", "pro-rata", None))
        .await;
    let mut theirs = price(CUFF, "20.00", "EUR", "pro-rata", None);
    theirs["extension"]
        .as_array_mut()
        .expect("extensions")
        .extend([
            json!({"url": format!("{EXT}billing-distributor"), "valueReference": {"reference": "Organization/dist"}}),
            json!({"url": format!("{EXT}billing-invoice-to"), "valueCode": "distributor"}),
        ]);
    app.create(&theirs).await;

    // In service all month: 25.00 + 7.25 % tax.
    device(
        app,
        CUFF,
        &[("2024-01-15T12:00:00Z", "active", "ny-clinic")],
    )
    .await;
    // A scale from the 10th to the 20th in New York (11 days of 29, pro rata: 11.00).
    device(
        app,
        SCALE,
        &[
            ("2024-02-10T17:00:00Z", "active", "ny-clinic"),
            ("2024-02-20T15:00:00Z", "inactive", "ny-clinic"),
        ],
    )
    .await;
    // Moved at 03:00 UTC on the 15th: the 14th in New York, the 15th in Berlin. New York pays
    // the month (any day); the distributor 15 days of 29 of 20.00 EUR (10.34).
    let moved = device(
        app,
        CUFF,
        &[
            ("2024-01-20T12:00:00Z", "active", "ny-clinic"),
            ("2024-02-15T03:00:00Z", "active", "berlin-clinic"),
        ],
    )
    .await;
    // Switched off from noon on the 5th to noon on the 20th in New York: 15 days of 29 (15.00).
    let reactivated = device(
        app,
        SCALE,
        &[
            ("2024-01-10T12:00:00Z", "active", "ny-clinic"),
            ("2024-02-05T17:00:00Z", "inactive", "ny-clinic"),
            ("2024-02-20T17:00:00Z", "active", "ny-clinic"),
        ],
    )
    .await;
    // Never in service.
    device(
        app,
        CUFF,
        &[("2024-01-20T12:00:00Z", "inactive", "ny-clinic")],
    )
    .await;
    // Switched on at 22:00 on the 29th in New York, which is already March in UTC.
    let late = device(
        app,
        CUFF,
        &[("2024-03-01T03:00:00Z", "active", "ny-clinic")],
    )
    .await;
    February {
        moved,
        late,
        reactivated,
    }
}

/// The run of a month from Device history, in each customer's time zone: ChargeItems and one
/// Invoice per recipient and currency, with line items, tax and totals; the same run again
/// changes nothing; a corrected price cancels the issued invoice and issues a new one.
async fn a_month_is_invoiced_from_device_history(app: TestApp) {
    let f = february(&app).await;
    let (out, progress) = bill_output(&app, "2024-02");
    assert!(out.contains("2 invoices issued (6 ChargeItems)"), "{out}");
    // Off a terminal, both phases report in plain lines, without a bar's escape codes.
    for line in [
        "bill 2024-02: devices: 100 % (",
        "bill 2024-02: devices: done, ",
        "bill 2024-02: recipients: 100 % (",
        "bill 2024-02: recipients: done, ",
    ] {
        assert!(progress.contains(line), "{line} in {progress}");
    }
    assert!(!progress.contains('\x1b'), "{progress:?}");

    let ny = invoices(&app, "ny-clinic").await;
    assert_eq!(ny.len(), 1, "{ny:?}");
    let inv = &ny[0];
    assert_eq!(inv["status"], "issued");
    assert_eq!(
        inv["identifier"][0]["value"], "ny-clinic/2024-02/USD",
        "{inv}"
    );
    assert_eq!(inv["date"], "2024-02-29T23:59:59-05:00");
    // 3 cuffs at 25.00 with 1.81 tax each, and the scales' 11.00 and 15.00.
    assert_eq!(amount(&inv["totalNet"]), usd("101.00"), "{inv}");
    assert_eq!(amount(&inv["totalGross"]), usd("106.43"), "{inv}");
    let lines = inv["lineItem"].as_array().expect("lines");
    assert_eq!(lines.len(), 5);
    let mut devices = Vec::new();
    for l in lines {
        let r = app
            .get(l["chargeItemReference"]["reference"].as_str().expect("ref"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let ci = r.json();
        assert_eq!(ci["status"], "billed");
        assert_eq!(ci["subject"]["reference"], "Group/billing-ny-clinic");
        devices.push((
            ci["productReference"]["reference"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ci["occurrencePeriod"]["start"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ci["occurrencePeriod"]["end"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ci["quantity"]["value"].as_u64().unwrap_or_default(),
        ));
    }
    assert!(
        devices.contains(&(
            format!("Device/{}", f.moved),
            "2024-02-01".into(),
            "2024-02-14".into(),
            14
        )),
        "{devices:?}"
    );
    assert!(
        devices.contains(&(
            format!("Device/{}", f.late),
            "2024-02-29".into(),
            "2024-02-29".into(),
            1
        )),
        "{devices:?}"
    );

    assert!(
        devices.contains(&(
            format!("Device/{}", f.reactivated),
            "2024-02-01".into(),
            "2024-02-29".into(),
            15
        )),
        "{devices:?}"
    );

    let dist = invoices(&app, "dist").await;
    assert_eq!(dist.len(), 1, "{dist:?}");
    assert_eq!(
        amount(&dist[0]["totalNet"]),
        ("10.34".to_owned(), "EUR".to_owned())
    );
    assert_eq!(dist[0]["date"], "2024-02-29T23:59:59+00:00");
    assert!(invoices(&app, "berlin-clinic").await.is_empty());

    // Again: nothing changes, not even a version.
    let versions = |app: TestApp| async move {
        let r = app.get("Invoice/_history?_summary=count").await;
        let c = app.get("ChargeItem/_history?_summary=count").await;
        (r.json()["total"].clone(), c.json()["total"].clone())
    };
    let before = versions(app.clone()).await;
    let out = bill(&app, "2024-02");
    assert!(
        out.contains("0 invoices issued (0 ChargeItems), 2 unchanged, 0 corrected"),
        "{out}"
    );
    assert_eq!(versions(app.clone()).await, before);

    // The scale's price was wrong: the run cancels New York's invoice and issues another;
    // the distributor's, unchanged, stays.
    let r = app
        .get(&format!(
            "ChargeItemDefinition?url=https://platform.example/price/{SCALE}-USD"
        ))
        .await;
    let mut def = r.json()["entry"][0]["resource"].clone();
    def["propertyGroup"][0]["priceComponent"][0]["amount"]["value"] = json!(30.00);
    let id = def["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.put(&format!("ChargeItemDefinition/{id}"), &def)
            .await
            .status,
        200
    );
    let out = bill(&app, "2024-02");
    assert!(out.contains("1 unchanged, 1 corrected"), "{out}");
    let ny = invoices(&app, "ny-clinic").await;
    assert_eq!(ny.len(), 2, "{ny:?}");
    let by_status = |s: &str| ny.iter().find(|i| i["status"] == s).expect(s);
    let (old, new) = (by_status("cancelled"), by_status("issued"));
    assert_eq!(old["id"], inv["id"]);
    assert_eq!(
        old["cancelledReason"],
        format!(
            "corrected: replaced by Invoice/{}",
            new["id"].as_str().unwrap_or_default()
        )
    );
    // Nothing else of the issued invoice was edited.
    assert_eq!(old["totalNet"], inv["totalNet"]);
    assert_eq!(old["lineItem"], inv["lineItem"]);
    assert_eq!(new["status"], "issued");
    // 30.00 × 11 / 29 = 11.38 and 30.00 × 15 / 29 = 15.52.
    assert_eq!(amount(&new["totalNet"]), usd("101.90"), "{new}");
    let first_item = old["lineItem"][0]["chargeItemReference"]["reference"]
        .as_str()
        .expect("ref")
        .to_owned();
    assert_eq!(app.get(&first_item).await.json()["status"], "aborted");
    assert_eq!(invoices(&app, "dist").await.len(), 1);
}
both!(a_month_is_invoiced_from_device_history);

fn summary_counts(out: &str) -> (u32, u32) {
    // "… N invoices issued (M ChargeItems), K unchanged, …"
    let number_before = |what: &str| -> u32 {
        let end = out.find(what).unwrap_or_else(|| panic!("{what} in {out}"));
        out[..end]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what} in {out}"))
    };
    (
        number_before(" invoices issued"),
        number_before(" unchanged"),
    )
}

/// Two processes running the same month at once issue each invoice once: the second waits
/// for the first's transaction on the recipient and finds its invoice. What each role then
/// sees of the invoices follows the tenancy of the recipient.
async fn two_runs_racing_issue_each_invoice_once(app: TestApp) {
    february(&app).await;
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .args([
                "bill",
                "--month",
                "2024-02",
                "--database-url",
                &app.database_url,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("bill starts")
    };
    let (a, b) = (spawn(), spawn());
    let mut issued = 0;
    let mut unchanged = 0;
    for child in [a, b] {
        let out = child.wait_with_output().expect("bill ends");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (i, u) = summary_counts(&text);
        issued += i;
        unchanged += u;
    }
    assert_eq!((issued, unchanged), (2, 2));
    assert_eq!(invoices(&app, "ny-clinic").await.len(), 1);
    assert_eq!(invoices(&app, "dist").await.len(), 1);
    let r = app.get("ChargeItem?_summary=count").await;
    assert_eq!(r.json()["total"], 6, "{}", r.text);

    // Customers see their own invoices and what they are billed for; distributors theirs and
    // their customers'; clinic staff no billing at all.
    let ny_invoice = invoices(&app, "ny-clinic").await[0].clone();
    let dist_invoice = invoices(&app, "dist").await[0].clone();
    let path = |i: &Value| format!("Invoice/{}", i["id"].as_str().unwrap_or_default());
    let get = |token: String, p: String| {
        let app = app.clone();
        async move {
            app.send(app.client.get(app.url(&p)).bearer_auth(token))
                .await
        }
    };
    let ny = crate::tenancy::role_token(&app, "customer", Some("ny-clinic")).await;
    assert_eq!(get(ny.clone(), path(&ny_invoice)).await.status, 200);
    let item = ny_invoice["lineItem"][0]["chargeItemReference"]["reference"]
        .as_str()
        .expect("ref")
        .to_owned();
    assert_eq!(get(ny.clone(), item.clone()).await.status, 200);
    assert_eq!(get(ny.clone(), path(&dist_invoice)).await.status, 404);
    let r = get(ny.clone(), "Invoice?_summary=count".into()).await;
    assert_eq!(r.json()["total"], 1, "{}", r.text);
    let r = app
        .send(
            app.client
                .put(app.url(&path(&ny_invoice)))
                .bearer_auth(&ny)
                .header("content-type", "application/fhir+json")
                .body(with(ny_invoice.clone(), "status", json!("balanced")).to_string()),
        )
        .await;
    assert_eq!(
        r.status, 403,
        "a customer does not settle its own invoice: {}",
        r.text
    );

    let dist = crate::tenancy::role_token(&app, "distributor", Some("dist")).await;
    assert_eq!(get(dist.clone(), path(&dist_invoice)).await.status, 200);
    assert_eq!(get(dist.clone(), path(&ny_invoice)).await.status, 404);
    let berlin = crate::tenancy::role_token(&app, "customer", Some("berlin-clinic")).await;
    let r = get(berlin, "Invoice?_summary=count".into()).await;
    assert_eq!(r.json()["total"], 0, "{}", r.text);
    let staff = crate::tenancy::role_token(&app, "customer-user", Some("ny-clinic")).await;
    assert_eq!(get(staff.clone(), "Invoice".into()).await.status, 403);
    assert_eq!(get(staff, item).await.status, 403);
}
both!(two_runs_racing_issue_each_invoice_once);

/// The scheduler inside `serve` runs each recipient's month when it has ended in the
/// recipient's time zone (and its customers'), once, in the process holding the lease.
async fn the_scheduler_runs_each_month_at_its_end_in_the_customers_time_zone(app: TestApp) {
    use vitalbridge::billing::schedule::tick;
    february(&app).await;
    let store = vitalbridge::store::Store::connect(&app.database_url, &Default::default())
        .await
        .expect("store");
    let month = |ticked: &vitalbridge::billing::schedule::Ticked, m: &str| {
        ticked
            .months
            .iter()
            .find(|(month, _)| month.to_string() == m)
            .map(|(_, r)| r.clone())
    };

    // 04:59 UTC on 1 March: February has ended in Berlin and in UTC, not yet in New York.
    // January, over everywhere, is run too (a server that was down at its end catches up).
    let done = tick(&store, "one", micros("2024-03-01T04:59:00Z"), None)
        .await
        .expect("tick");
    let feb = month(&done, "2024-02").expect("February ran");
    assert_eq!(feb.issued.len(), 1, "{feb:?}");
    assert_eq!(feb.not_ended, vec!["ny-clinic".to_owned()]);
    let jan = month(&done, "2024-01").expect("January ran");
    assert_eq!(jan.issued.len(), 1, "{jan:?}");
    assert_eq!(invoices(&app, "dist").await.len(), 1);
    let ny = invoices(&app, "ny-clinic").await;
    assert_eq!(ny.len(), 1);
    assert_eq!(ny[0]["identifier"][0]["value"], "ny-clinic/2024-01/USD");

    // Another process does not run while the first holds the lease.
    let other = tick(&store, "two", micros("2024-03-01T05:00:00Z"), None)
        .await
        .expect("tick");
    assert!(other.months.is_empty(), "{other:?}");
    assert_eq!(invoices(&app, "ny-clinic").await.len(), 1);

    // Midnight in New York: its February.
    let done = tick(&store, "one", micros("2024-03-01T05:00:00Z"), None)
        .await
        .expect("tick");
    let feb = month(&done, "2024-02").expect("February ran");
    assert_eq!(feb.issued.len(), 1, "{feb:?}");
    assert!(feb.not_ended.is_empty());
    assert_eq!(invoices(&app, "ny-clinic").await.len(), 2);

    // Done months are not run again.
    let later = tick(&store, "one", micros("2024-03-01T06:00:00Z"), None)
        .await
        .expect("tick");
    assert!(later.months.is_empty(), "{later:?}");
    // When the holder stops renewing, another process takes over.
    assert!(
        store
            .take_lease("billing", "two", micros("2024-03-01T06:16:00Z"), 1)
            .await
            .expect("lease")
    );
    store.close().await;
}
both!(the_scheduler_runs_each_month_at_its_end_in_the_customers_time_zone);

fn payment(amount: &str, currency: &str, reference: Option<&str>) -> Value {
    let mut p = json!({"resourceType": "Parameters", "parameter": [
        {"name": "amount", "valueMoney": {
            "value": serde_json::from_str::<Value>(amount).expect("a number"), "currency": currency}},
        {"name": "date", "valueDate": "2024-03-10"}
    ]});
    if let Some(r) = reference {
        p["parameter"].as_array_mut().expect("list").push(json!(
            {"name": "identifier", "valueIdentifier": {"system": "https://bank.example/transfer", "value": r}}
        ));
    }
    p
}

/// Recording payments (`Invoice/[id]/$record-payment`): partial payments are tracked on the
/// invoice, a retried payment counts once, the invoice is `balanced` when paid in full, and a
/// re-run of the month does not take a payment for a change. Customers see their invoices'
/// status and payments; they do not record them.
async fn payments_move_an_invoice_to_balanced(app: TestApp) {
    february(&app).await;
    bill(&app, "2024-02");
    let inv = invoices(&app, "ny-clinic").await[0].clone();
    let id = inv["id"].as_str().expect("id").to_owned();
    let pay = |body: Value| {
        let app = app.clone();
        let id = id.clone();
        async move {
            app.post(&format!("Invoice/{id}/$record-payment"), &body)
                .await
        }
    };
    let paid = |i: &Value| {
        i["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == format!("{EXT}billing-paid"))
            .map(|e| amount(&e["valueMoney"]))
    };

    let r = pay(payment("50.00", "USD", Some("T1"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["status"], "issued");
    assert_eq!(paid(&r.json()), Some(usd("50.00")));
    // The bank's retry of the same transfer counts once.
    let r = pay(payment("50.00", "USD", Some("T1"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(paid(&r.json()), Some(usd("50.00")));
    let r = app.get("PaymentReconciliation?_summary=count").await;
    assert_eq!(r.json()["total"], 1, "{}", r.text);

    for (bad, status) in [
        (payment("10", "EUR", None), 422),
        (payment("0", "USD", None), 422),
        (payment("1.001", "USD", None), 422),
        (json!({"resourceType": "Parameters"}), 422),
    ] {
        let r = pay(bad.clone()).await;
        assert_eq!(r.status, status, "{bad}: {}", r.text);
        assert!(!r.outcome_issues().is_empty(), "{}", r.text);
    }
    assert_eq!(
        app.post(
            "Invoice/no-such-invoice/$record-payment",
            &payment("1", "USD", None)
        )
        .await
        .status,
        404
    );

    let customer = crate::tenancy::role_token(&app, "customer", Some("ny-clinic")).await;
    let r = app
        .send(
            app.client
                .post(app.url(&format!("Invoice/{id}/$record-payment")))
                .bearer_auth(&customer)
                .header("content-type", "application/fhir+json")
                .body(payment("56.43", "USD", None).to_string()),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    let r = pay(payment("56.43", "USD", Some("T2"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["status"], "balanced");
    assert_eq!(paid(&r.json()), Some(usd("106.43")));
    // Nothing of what was invoiced changed.
    assert_eq!(r.json()["lineItem"], inv["lineItem"]);
    assert_eq!(r.json()["totalGross"], inv["totalGross"]);
    let r = pay(payment("1", "USD", None)).await;
    assert_eq!(r.status, 422, "{}", r.text);

    // The customer sees the status and its payments; the distributor sees neither.
    let as_customer = |p: String| {
        let app = app.clone();
        let t = customer.clone();
        async move { app.send(app.client.get(app.url(&p)).bearer_auth(t)).await }
    };
    let r = as_customer(format!("Invoice/{id}")).await;
    assert_eq!(r.json()["status"], "balanced", "{}", r.text);
    let r = as_customer("PaymentReconciliation?_summary=count".into()).await;
    assert_eq!(r.json()["total"], 2, "{}", r.text);
    let dist = crate::tenancy::role_token(&app, "distributor", Some("dist")).await;
    let r = app
        .send(
            app.client
                .get(app.url("PaymentReconciliation?_summary=count"))
                .bearer_auth(dist),
        )
        .await;
    assert_eq!(r.json()["total"], 0, "{}", r.text);

    // A PaymentReconciliation posted as such pays (here refunds) the invoice it names, in its
    // own transaction; recorded payments are a ledger, never changed or deleted.
    let refund = json!({
        "resourceType": "PaymentReconciliation",
        "status": "active",
        "created": "2024-03-12T10:00:00Z",
        "paymentDate": "2024-03-12",
        "paymentAmount": {"value": 6.43, "currency": "USD"},
        "paymentIssuer": {"reference": "Organization/ny-clinic"},
        "detail": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/payment-type", "code": "adjustment"}]},
            "request": {"reference": format!("Invoice/{id}")},
            "amount": {"value": -6.43, "currency": "USD"}
        }]
    });
    let refund_id = app.create(&refund).await;
    let after = app.get(&format!("Invoice/{id}")).await.json();
    assert_eq!(after["status"], "issued", "{after}");
    assert_eq!(paid(&after), Some(usd("100.00")));
    let r = app
        .put(
            &format!("PaymentReconciliation/{refund_id}"),
            &with(refund.clone(), "id", json!(refund_id)),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = app
        .delete(&format!("PaymentReconciliation/{refund_id}"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // A payment an invoice cannot take is not stored at all.
    let mut unknown = refund.clone();
    unknown["detail"][0]["request"]["reference"] = json!("Invoice/no-such-invoice");
    let r = app.post("PaymentReconciliation", &unknown).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let mut too_much = refund.clone();
    too_much["detail"][0]["amount"]["value"] = json!(-500);
    assert_eq!(
        app.post("PaymentReconciliation", &too_much).await.status,
        422
    );
    let r = app.get("PaymentReconciliation?_summary=count").await;
    assert_eq!(r.json()["total"], 3, "{}", r.text);

    // Being paid is not a correction: the month runs again unchanged.
    let out = bill(&app, "2024-02");
    assert!(out.contains("2 unchanged, 0 corrected"), "{out}");
    assert_eq!(invoices(&app, "ny-clinic").await.len(), 1);
}
both!(payments_move_an_invoice_to_balanced);

/// Statements: each issued invoice is e-mailed, through a real SMTP server, to the recipient's
/// billing contact (else its own address) as HTML with a plain-text part; once, and not for an
/// invoice cancelled before it went out; a recipient without an address is retried later.
async fn statements_are_emailed_to_the_billing_contact(app: TestApp) {
    use crate::email::{PASSWORD, SmtpServer, USER};
    use vitalbridge::billing::schedule::tick;
    use vitalbridge::subscriptions::email::{Mailer, SmtpConfig};
    let f = february(&app).await;
    // New York's billing contact, and the distributor's own address.
    let mut ny = app.get("Organization/ny-clinic").await.json();
    ny["telecom"] = json!([{"system": "email", "value": "front-desk@ny.example"}]);
    ny["contact"] = json!([{
        "purpose": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/contactentity-type", "code": "BILL"}]},
        "telecom": [{"system": "email", "value": "billing@ny.example"}]
    }]);
    assert_eq!(app.put("Organization/ny-clinic", &ny).await.status, 200);

    let smtp = SmtpServer::start(None, false).await;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mailer = Mailer::new(&SmtpConfig {
        url: format!("smtp://{USER}:{}@127.0.0.1:{}", enc(PASSWORD), smtp.port),
        from: "billing@platform.example".into(),
        ca_file: None,
    })
    .expect("mailer");
    let store = vitalbridge::store::Store::connect(&app.database_url, &Default::default())
        .await
        .expect("store");
    let done = tick(&store, "one", micros("2024-03-02T00:00:00Z"), Some(&mailer))
        .await
        .expect("tick");
    // January's and February's invoices for New York; the distributor has no address yet.
    assert_eq!(done.statements, 2, "{done:?}");
    let got = smtp.wait_for(2).await;
    let part = |meta: &Value, ty: &str| {
        meta["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"] == ty)
            .and_then(|p| p["text"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (_, meta) = got
        .iter()
        .find(|(_, meta)| {
            meta["subject"]
                .as_str()
                .is_some_and(|s| s.contains("Statement for 2024-02"))
        })
        .expect("February's statement");
    assert_eq!(meta["to"], json!(["billing@ny.example"]), "{meta}");
    assert!(
        meta["subject"]
            .as_str()
            .unwrap_or_default()
            .contains("106.43 USD"),
        "{meta}"
    );
    let (html, text) = (part(meta, "text/html"), part(meta, "text/plain"));
    // One row per device, three cuffs and two scales, and the totals.
    assert_eq!(html.matches("<tr><td class=\"n\">").count(), 5, "{html}");
    assert!(html.contains("Total due: <b>106.43 USD</b>"), "{html}");
    assert!(html.contains(&format!("Device/{}", f.moved)), "{html}");
    assert!(text.contains("Total due: 106.43 USD"), "{text}");

    // The distributor gets an address: its statement goes out on a later tick, once.
    let mut dist = app.get("Organization/dist").await.json();
    dist["telecom"] = json!([{"system": "email", "value": "accounts@dist.example"}]);
    assert_eq!(app.put("Organization/dist", &dist).await.status, 200);
    let done = tick(&store, "one", micros("2024-03-03T00:00:00Z"), Some(&mailer))
        .await
        .expect("tick");
    assert_eq!(done.statements, 1, "{done:?}");
    let got = smtp.wait_for(3).await;
    assert_eq!(got[2].1["to"], json!(["accounts@dist.example"]));
    assert!(
        part(&got[2].1, "text/plain").contains("Total due: 10.34 EUR"),
        "{:?}",
        got[2].1
    );
    assert!(part(&got[2].1, "text/html").contains("Organization/berlin-clinic"));
    let done = tick(&store, "one", micros("2024-03-10T00:00:00Z"), Some(&mailer))
        .await
        .expect("tick");
    assert_eq!(done.statements, 0, "each statement once");
    store.close().await;
}
both!(statements_are_emailed_to_the_billing_contact);

/// A day `days` from today (UTC), at `hour`.
fn days_from_today(days: i64, hour: i8) -> String {
    let today = jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let d = today
        .checked_add(jiff::Span::new().days(days))
        .expect("a date");
    format!("{d}T{hour:02}:00:00Z")
}

fn reading(patient: &str, device: Option<&str>, at: &str) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": at,
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    if let Some(d) = device {
        o["device"] = json!({"reference": format!("Device/{d}")});
    }
    o
}

fn management_time(patient: &str, start: &str, minutes: i64) -> Value {
    let end = start
        .parse::<jiff::Timestamp>()
        .expect("instant")
        .checked_add(jiff::Span::new().minutes(minutes))
        .expect("end");
    json!({
        "resourceType": "Procedure",
        "status": "completed",
        "code": {"coding": [{"system": "https://vitalbridge.dev/fhir/CodeSystem/rpm-activity", "code": "management-time"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "performedPeriod": {"start": start, "end": end.to_string()}
    })
}

/// RPM Claims from stored readings: per patient and ended 30-day period, the codes the rules
/// (data) give for the days with device readings and the management minutes staff recorded;
/// set-up once per episode; 99454 and 99445 never together; insurance from the patient's
/// Coverage; made once however often the run goes.
async fn rpm_claims_come_from_the_stored_readings(app: TestApp) {
    organization(&app, "rpm-clinic", "UTC", None).await;
    let patient = |name: &str| {
        json!({"resourceType": "Patient", "name": [{"family": name}],
               "managingOrganization": {"reference": "Organization/rpm-clinic"}})
    };
    let p = app.create(&patient("Monitored")).await;
    let uninsured = app.create(&patient("Uninsured")).await;
    let cuff = app
        .create(&json!({"resourceType": "Device", "status": "active",
            "owner": {"reference": "Organization/rpm-clinic"}}))
        .await;
    let coverage = app
        .create(&json!({"resourceType": "Coverage", "status": "active",
            "beneficiary": {"reference": format!("Patient/{p}")},
            "payor": [{"reference": "Organization/rpm-clinic"}]}))
        .await;

    // The episode starts 65 days ago: the first period has readings on 18 days (two on some),
    // the second on 5 days and one reading typed in by hand (no device), which does not count.
    let mut entries = Vec::new();
    for day in 0..18 {
        entries.push(reading(&p, Some(&cuff), &days_from_today(-65 + day, 8)));
        if day % 3 == 0 {
            entries.push(reading(&p, Some(&cuff), &days_from_today(-65 + day, 20)));
        }
    }
    for day in 30..35 {
        entries.push(reading(&p, Some(&cuff), &days_from_today(-65 + day, 9)));
    }
    entries.push(reading(&p, None, &days_from_today(-65 + 36, 9)));
    for day in 0..3 {
        entries.push(reading(
            &uninsured,
            Some(&cuff),
            &days_from_today(-65 + day, 9),
        ));
    }
    // 45 minutes of management in the first period, 12 in the second.
    entries.push(management_time(&p, &days_from_today(-60, 14), 25));
    entries.push(management_time(&p, &days_from_today(-50, 14), 20));
    entries.push(management_time(&p, &days_from_today(-20, 14), 12));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries
        .into_iter()
        .map(|r| {
            let ty = r["resourceType"].as_str().unwrap_or_default().to_owned();
            json!({"resource": r, "request": {"method": "POST", "url": ty}})
        })
        .collect::<Vec<_>>()});
    let r = app.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .args(["claims", "--database-url", &app.database_url])
            .output()
            .expect("claims runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = run();
    assert!(
        out.contains("2 claims made, 0 already claimed"),
        "{out}{err}"
    );
    assert!(
        err.contains(&format!("Patient/{uninsured} has no active Coverage")),
        "{err}"
    );

    let r = app
        .get(&format!("Claim?patient=Patient/{p}&_sort=_lastUpdated"))
        .await;
    let claims: Vec<Value> = r.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect();
    assert_eq!(claims.len(), 2, "{}", r.text);
    let codes = |c: &Value| -> Vec<(String, u64)> {
        c["item"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["productOrService"]["coding"][0]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    i["quantity"]["value"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    let by_start = |start: &str| {
        claims
            .iter()
            .find(|c| c["billablePeriod"]["start"] == start)
            .unwrap_or_else(|| panic!("a claim from {start}: {claims:?}"))
    };
    let first = by_start(&days_from_today(-65, 0)[..10]);
    assert_eq!(
        codes(first),
        vec![
            ("99453".to_owned(), 1),
            ("99454".to_owned(), 1),
            ("99457".to_owned(), 1),
            ("99458".to_owned(), 1)
        ]
    );
    assert_eq!(
        first["billablePeriod"]["end"],
        &days_from_today(-36, 0)[..10]
    );
    assert_eq!(first["provider"]["reference"], "Organization/rpm-clinic");
    assert_eq!(
        first["insurance"][0]["coverage"]["reference"],
        format!("Coverage/{coverage}")
    );
    assert_eq!(first["type"]["coding"][0]["code"], "professional");
    assert_eq!(first["use"], "claim");
    assert_eq!(
        first["item"][0]["servicedPeriod"], first["billablePeriod"],
        "{first}"
    );
    let second = by_start(&days_from_today(-35, 0)[..10]);
    assert_eq!(
        codes(second),
        vec![("99445".to_owned(), 1), ("99470".to_owned(), 1)]
    );

    // Again: nothing new.
    let (out, _) = run();
    assert!(out.contains("0 claims made, 2 already claimed"), "{out}");
    // The clinic sees its claims; another clinic does not.
    let clinic = crate::tenancy::role_token(&app, "customer", Some("rpm-clinic")).await;
    let r = app
        .send(
            app.client
                .get(app.url("Claim?_summary=count"))
                .bearer_auth(clinic),
        )
        .await;
    assert_eq!(r.json()["total"], 2, "{}", r.text);
    organization(&app, "other-clinic", "UTC", None).await;
    let other = crate::tenancy::role_token(&app, "customer", Some("other-clinic")).await;
    let r = app
        .send(
            app.client
                .get(app.url("Claim?_summary=count"))
                .bearer_auth(other),
        )
        .await;
    assert_eq!(r.json()["total"], 0, "{}", r.text);
}
both!(rpm_claims_come_from_the_stored_readings);

/// Two server processes on one database, each with the billing scheduler on: the month that
/// has just ended is invoiced once, whichever process gets to it. The clinic's distributor
/// sees its customer's invoice.
async fn two_server_processes_bill_the_month_once(app: TestApp) {
    let month = vitalbridge::billing::Month::last_ended(jiff::Timestamp::now().as_microsecond());
    organization(&app, "utc-dist", "UTC", None).await;
    organization(&app, "utc-clinic", "UTC", Some("utc-dist")).await;
    app.create(&price(CUFF, "25.00", "USD", "any-day", None))
        .await;
    for i in 0..3 {
        device(
            &app,
            CUFF,
            &[(
                &format!("{month}-0{}T12:00:00Z", i + 2),
                "active",
                "utc-clinic",
            )],
        )
        .await;
    }
    let env = [("VB_BILLING_INTERVAL_SECS", "1")];
    let mut servers = Vec::new();
    for _ in 0..2 {
        let port = crate::process::free_port();
        servers.push(crate::process::start_with(&app.database_url, port, &env).await);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while invoices(&app, "utc-clinic").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no invoice from either server"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Several more ticks of both.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for mut s in servers {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
    let found = invoices(&app, "utc-clinic").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0]["identifier"][0]["value"],
        format!("utc-clinic/{month}/USD")
    );
    assert_eq!(amount(&found[0]["totalNet"]), usd("75.00"));
    let r = app.get("Invoice/_history").await;
    assert_eq!(
        r.json()["entry"].as_array().map_or(0, Vec::len),
        1,
        "one version of one invoice: {}",
        r.text
    );
    let r = app.get("ChargeItem?_summary=count").await;
    assert_eq!(r.json()["total"], 3, "{}", r.text);

    let dist = crate::tenancy::role_token(&app, "distributor", Some("utc-dist")).await;
    let as_dist = |p: String| {
        let app = app.clone();
        let t = dist.clone();
        async move { app.send(app.client.get(app.url(&p)).bearer_auth(t)).await }
    };
    let id = found[0]["id"].as_str().unwrap_or_default();
    let r = as_dist(format!("Invoice/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = as_dist("Invoice?_summary=count".into()).await;
    assert_eq!(r.json()["total"], 1, "{}", r.text);
}
both!(two_server_processes_bill_the_month_once);

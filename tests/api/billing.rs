//! Billing (issue 7): the price catalog as ChargeItemDefinitions claiming the catalog-entry
//! profile, checked on write as the monthly run will read them.

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;

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

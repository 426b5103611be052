//! Number, quantity and composite search (https://hl7.org/fhir/R4/search.html#number,
//! #quantity, #composite): `eq` (the default) covers the implicit precision of the value
//! (`100` is [99.5, 100.5), `100.0` is [99.95, 100.05)); the other prefixes compare with the
//! value as written; `value|system|code` converts UCUM units to a common unit; `||code` matches
//! the unit code or unit text; a composite pairs its components on the same Observation or
//! the same component.

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{check, loinc, put, ucum};

fn quantity_obs(id: &str, code: Value, value: Value) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final", "code": code,
           "subject": {"reference": "Patient/q-pat"}, "valueQuantity": value})
}

fn blood_pressure(id: &str, systolic: f64, diastolic: f64) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": loinc("85354-9", "Blood pressure panel"),
           "subject": {"reference": "Patient/q-pat"},
           "component": [
               {"code": loinc("8480-6", "Systolic blood pressure"), "valueQuantity": ucum(systolic, "mm[Hg]")},
               {"code": loinc("8462-4", "Diastolic blood pressure"), "valueQuantity": ucum(diastolic, "mm[Hg]")}]})
}

/// Body weights in kg, lb, g and a unit without a system; heart rates around 100/min; blood
/// pressure panels; RiskAssessments with probabilities.
async fn seed(app: &TestApp) {
    put(
        app,
        json!({"resourceType": "Patient", "id": "q-pat", "name": [{"family": "Quantity"}]}),
    )
    .await;
    let weight = || loinc("29463-7", "Body weight");
    // Measured body weight (another code), in other units: 154.3 lb = 69.99 kg, 70000 g = 70 kg.
    let measured = || loinc("3141-9", "Body weight Measured");
    let hr = || loinc("8867-4", "Heart rate");
    for o in [
        quantity_obs("q-72kg", weight(), ucum(72.0, "kg")),
        quantity_obs("q-68kg", weight(), ucum(68.0, "kg")),
        quantity_obs("q-75kg-nosys", weight(), json!({"value": 75, "unit": "kg"})),
        quantity_obs(
            "q-154lb",
            measured(),
            json!({"value": 154.3, "unit": "lb", "system": "http://unitsofmeasure.org", "code": "[lb_av]"}),
        ),
        quantity_obs(
            "q-70000g",
            measured(),
            json!({"value": 70000, "unit": "g", "system": "http://unitsofmeasure.org", "code": "g"}),
        ),
        quantity_obs("q-hr-100-3", hr(), ucum(100.3, "/min")),
        quantity_obs("q-hr-100-6", hr(), ucum(100.6, "/min")),
        quantity_obs("q-hr-99-4", hr(), ucum(99.4, "/min")),
        quantity_obs("q-hr-100-02", hr(), ucum(100.02, "/min")),
        // Systolic high.
        blood_pressure("bp-high-sys", 150.0, 90.0),
        // Diastolic above 140, systolic not: must not satisfy "systolic > 140".
        blood_pressure("bp-high-dia", 120.0, 145.0),
        blood_pressure("bp-normal", 130.0, 85.0),
    ] {
        put(app, o).await;
    }
    for (id, probabilities) in [
        ("ra-03", vec![0.3]),
        ("ra-05", vec![0.5]),
        ("ra-07", vec![0.7]),
        ("ra-02-09", vec![0.2, 0.9]),
    ] {
        let prediction: Vec<Value> = probabilities
            .iter()
            .map(|p| json!({"probabilityDecimal": p}))
            .collect();
        put(
            app,
            json!({"resourceType": "RiskAssessment", "id": id, "status": "final",
                   "subject": {"reference": "Patient/q-pat"}, "prediction": prediction}),
        )
        .await;
    }
}

const UCUM: &str = "http://unitsofmeasure.org";

async fn quantity_prefixes_precision_units(app: TestApp) {
    seed(&app).await;
    let hr = "Observation?code=http://loinc.org|8867-4&value-quantity=";
    // Implicit precision: 100 is [99.5, 100.5), 100.0 is [99.95, 100.05), 1e2 is [95, 105).
    check(&app, &format!("{hr}100"), &["q-hr-100-3", "q-hr-100-02"]).await;
    check(&app, &format!("{hr}100.0"), &["q-hr-100-02"]).await;
    check(
        &app,
        &format!("{hr}1e2"),
        &["q-hr-100-3", "q-hr-100-6", "q-hr-99-4", "q-hr-100-02"],
    )
    .await;
    check(&app, &format!("{hr}eq100.3"), &["q-hr-100-3"]).await;
    check(&app, &format!("{hr}ne100"), &["q-hr-100-6", "q-hr-99-4"]).await;
    // The other prefixes use the value as written.
    check(&app, &format!("{hr}lt100"), &["q-hr-99-4"]).await;
    check(
        &app,
        &format!("{hr}ge100"),
        &["q-hr-100-3", "q-hr-100-6", "q-hr-100-02"],
    )
    .await;
    check(&app, &format!("{hr}gt100.3"), &["q-hr-100-6"]).await;
    check(
        &app,
        &format!("{hr}le100.3"),
        &["q-hr-100-3", "q-hr-99-4", "q-hr-100-02"],
    )
    .await;
    check(&app, &format!("{hr}sa100.5"), &["q-hr-100-6"]).await;
    check(&app, &format!("{hr}eb100"), &["q-hr-99-4"]).await;
    check(
        &app,
        &format!("{hr}ap100"),
        &["q-hr-100-3", "q-hr-100-6", "q-hr-99-4", "q-hr-100-02"],
    )
    .await;
    // With the unit: system and code.
    check(
        &app,
        &format!("Observation?value-quantity=100|{UCUM}|/min"),
        &["q-hr-100-3", "q-hr-100-02"],
    )
    .await;
    check(
        &app,
        &format!("Observation?value-quantity=68|{UCUM}|kg"),
        &["q-68kg"],
    )
    .await;
    // UCUM conversion: 154.3 [lb_av] is 69.99 kg and 70000 g is 70 kg; both are 70 kg at the
    // precision of "70"; neither is more than 70 kg; the lb one is less.
    check(
        &app,
        &format!("Observation?value-quantity=70|{UCUM}|kg"),
        &["q-154lb", "q-70000g"],
    )
    .await;
    check(
        &app,
        &format!("Observation?value-quantity=gt70|{UCUM}|kg"),
        &["q-72kg"],
    )
    .await;
    check(
        &app,
        &format!("Observation?value-quantity=lt70|{UCUM}|kg"),
        &["q-68kg", "q-154lb"],
    )
    .await;
    check(
        &app,
        &format!("Observation?value-quantity=70000|{UCUM}|g"),
        &["q-70000g"],
    )
    .await;
    // ||unit: any system, matched on the unit code or the unit text (q-75kg-nosys has only a
    // unit text).
    check(
        &app,
        "Observation?value-quantity=gt70||kg",
        &["q-72kg", "q-75kg-nosys"],
    )
    .await;
    // value-quantity reads Observation.value only, never the components.
    check(&app, "Observation?value-quantity=150", &[]).await;
    check(
        &app,
        "Observation?component-value-quantity=150",
        &["bp-high-sys"],
    )
    .await;
    check(
        &app,
        "Observation?value-quantity:missing=true",
        &["bp-high-sys", "bp-high-dia", "bp-normal"],
    )
    .await;
}
both!(quantity_prefixes_precision_units);

async fn number_parameter(app: TestApp) {
    seed(&app).await;
    // A resource matches when any of its values does.
    check(
        &app,
        "RiskAssessment?probability=gt0.5",
        &["ra-07", "ra-02-09"],
    )
    .await;
    check(
        &app,
        "RiskAssessment?probability=ge0.5",
        &["ra-05", "ra-07", "ra-02-09"],
    )
    .await;
    check(
        &app,
        "RiskAssessment?probability=lt0.5",
        &["ra-03", "ra-02-09"],
    )
    .await;
    check(
        &app,
        "RiskAssessment?probability=le0.3",
        &["ra-03", "ra-02-09"],
    )
    .await;
    check(&app, "RiskAssessment?probability=0.5", &["ra-05"]).await;
    check(&app, "RiskAssessment?probability=0.50", &["ra-05"]).await;
    check(&app, "RiskAssessment?probability=0.9", &["ra-02-09"]).await;
    check(
        &app,
        "RiskAssessment?probability=ne0.5",
        &["ra-03", "ra-07", "ra-02-09"],
    )
    .await;
    check(
        &app,
        "RiskAssessment?probability=0.3,0.7",
        &["ra-03", "ra-07"],
    )
    .await;
    // AND: each parameter is evaluated on its own, so ra-02-09 qualifies through 0.9 for one
    // bound and 0.2 for the other.
    check(
        &app,
        "RiskAssessment?probability=gt0.25&probability=lt0.6",
        &["ra-03", "ra-05", "ra-02-09"],
    )
    .await;
}
both!(number_parameter);

async fn composite_parameters(app: TestApp) {
    seed(&app).await;
    // code-value-quantity: the code and the value of the same Observation.
    check(
        &app,
        "Observation?code-value-quantity=http://loinc.org|29463-7$gt70",
        &["q-72kg", "q-75kg-nosys"],
    )
    .await;
    check(
        &app,
        "Observation?code-value-quantity=http://loinc.org|29463-7$lt70",
        &["q-68kg"],
    )
    .await;
    check(
        &app,
        &format!("Observation?code-value-quantity=http://loinc.org|29463-7$gt70|{UCUM}|kg"),
        &["q-72kg"],
    )
    .await;
    check(
        &app,
        "Observation?code-value-quantity=http://loinc.org|29463-7$gt70,http://loinc.org|8867-4$gt100.5",
        &["q-72kg", "q-75kg-nosys", "q-hr-100-6"],
    )
    .await;
    // component-code-value-quantity: code and value of the same component. bp-high-dia has a
    // component above 140 and a systolic component, but not one systolic component above 140.
    check(
        &app,
        "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140",
        &["bp-high-sys"],
    )
    .await;
    check(
        &app,
        "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt140",
        &["bp-high-dia"],
    )
    .await;
    check(
        &app,
        &format!(
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140|{UCUM}|mm[Hg]"
        ),
        &["bp-high-sys"],
    )
    .await;
    check(
        &app,
        "Observation?component-code-value-quantity=http://loinc.org|8480-6$lt125",
        &["bp-high-dia"],
    )
    .await;
    // Two separate parameters are not a composite: each may hold on a different component.
    check(
        &app,
        "Observation?component-code=http://loinc.org|8480-6&component-value-quantity=gt140",
        &["bp-high-sys", "bp-high-dia"],
    )
    .await;
    // combo-: the Observation itself or any of its components, never the code of one with the
    // value of the other.
    check(
        &app,
        "Observation?combo-code-value-quantity=http://loinc.org|8480-6$gt140",
        &["bp-high-sys"],
    )
    .await;
    check(
        &app,
        "Observation?combo-code-value-quantity=http://loinc.org|29463-7$gt70",
        &["q-72kg", "q-75kg-nosys"],
    )
    .await;
    check(
        &app,
        "Observation?combo-code-value-quantity=http://loinc.org|85354-9$gt0",
        &[],
    )
    .await;
}
both!(composite_parameters);

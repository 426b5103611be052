//! JSON and XML, chosen by Accept or _format; _pretty; the CapabilityStatement.

use serde_json::json;

use crate::both;
use crate::common::{TestApp, patient, with};

const DIV: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Reading <b>high</b> at <i>08:30</i>, see <a href=\"#x\">note</a> .</p>\n  <p>  two spaces</p></div>";

async fn xml_and_json(app: TestApp) {
    let p = with(
        patient("Xml"),
        "text",
        json!({"status": "generated", "div": DIV}),
    );
    let id = app.create(&p).await;

    // Accept and _format select XML; narrative whitespace is kept exactly.
    for req in [
        app.client
            .get(app.url(&format!("Patient/{id}")))
            .header("accept", "application/fhir+xml"),
        app.client
            .get(app.url(&format!("Patient/{id}?_format=xml"))),
        app.client
            .get(app.url(&format!("Patient/{id}?_format=application/fhir%2Bxml"))),
    ] {
        let r = app.send(req).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/fhir+xml"))
        );
        assert!(
            r.text.contains("<Patient xmlns=\"http://hl7.org/fhir\">"),
            "{}",
            r.text
        );
        assert!(r.text.contains(DIV), "narrative changed: {}", r.text);
        assert!(r.text.contains("<family value=\"Xml\"/>"), "{}", r.text);
    }

    // XML in: create from XML, read back as JSON, same content.
    let xml = app
        .send(
            app.client
                .get(app.url(&format!("Patient/{id}?_format=xml"))),
        )
        .await
        .text
        .replace(&format!("<id value=\"{id}\"/>"), "");
    let r = app
        .send(
            app.client
                .post(app.url("Patient"))
                .header("content-type", "application/fhir+xml")
                .header("accept", "application/fhir+xml")
                .body(xml),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        r.text.starts_with("<?xml") || r.text.starts_with("<Patient"),
        "{}",
        r.text
    );
    let loc = r.header("location").expect("location").to_owned();
    let new_id = loc.split('/').rev().nth(2).expect("id").to_owned();
    let back = app.get(&format!("Patient/{new_id}")).await.json();
    assert_eq!(back["text"]["div"], DIV);
    assert_eq!(back["name"], p["name"]);
    assert_eq!(back["birthDate"], "1950-04-01");

    // Bad XML is a 400 OperationOutcome, in XML when XML is asked.
    let r = app
        .send(
            app.client
                .post(app.url("Patient"))
                .header("content-type", "application/fhir+xml")
                .header("accept", "application/fhir+xml")
                .body("<Patient xmlns=\"http://hl7.org/fhir\"><colour value=\"red\"/></Patient>"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("<OperationOutcome"), "{}", r.text);

    // application/json is answered as application/json; _pretty indents.
    let r = app
        .send(
            app.client
                .get(app.url(&format!("Patient/{id}")))
                .header("accept", "application/json"),
        )
        .await;
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let compact = r.text.clone();
    assert!(!compact.contains('\n'));
    let r = app.get(&format!("Patient/{id}?_pretty=true")).await;
    assert!(
        r.text.contains("\n  \"resourceType\": \"Patient\""),
        "{}",
        r.text
    );
    assert_eq!(
        r.json(),
        serde_json::from_str::<serde_json::Value>(&compact).expect("json")
    );

    // Search and history Bundles come in XML too.
    let r = app.get("Patient?_format=xml").await;
    assert!(
        r.text.contains("<Bundle xmlns=\"http://hl7.org/fhir\">"),
        "{}",
        r.text
    );
    assert!(r.text.contains(DIV));
    let r = app.get(&format!("Patient/{id}/_history?_format=xml")).await;
    assert!(r.text.contains("<type value=\"history\"/>"), "{}", r.text);
}
both!(xml_and_json);

async fn capability_statement(app: TestApp) {
    let r = app.get("metadata").await;
    assert_eq!(r.status, 200);
    let cs = r.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["kind"], "instance");
    let formats: Vec<&str> = cs["format"]
        .as_array()
        .expect("format")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        formats.contains(&"application/fhir+json") && formats.contains(&"application/fhir+xml")
    );
    let resources = cs["rest"][0]["resource"].as_array().expect("resources");
    assert_eq!(resources.len(), 146, "every R4 resource type");
    let obs = resources
        .iter()
        .find(|r| r["type"] == "Observation")
        .expect("Observation");
    let interactions: Vec<&str> = obs["interaction"]
        .as_array()
        .expect("i")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    for i in [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ] {
        assert!(interactions.contains(&i), "{i}");
    }
    let system: Vec<&str> = cs["rest"][0]["interaction"]
        .as_array()
        .expect("i")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(
        system,
        vec!["transaction", "batch", "history-system", "search-system"]
    );
    // Every R4 search parameter of the type is advertised, and the operations.
    let obs = cs["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Observation")
        .expect("Observation");
    let params: Vec<&str> = obs["searchParam"]
        .as_array()
        .expect("searchParam")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in [
        "code",
        "patient",
        "date",
        "component-code-value-quantity",
        "_lastUpdated",
        "_tag",
    ] {
        assert!(params.contains(&p), "{p} in {params:?}");
    }
    let ops: Vec<&str> = obs["operation"]
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(ops, ["validate", "lastn"]);
    // Searches answer in XML too, with and without results.
    for q in [
        "Patient?name=nobody&_format=xml",
        "Observation?_summary=count&_format=xml",
        "Device/_history?_format=xml",
    ] {
        let r = app.get(q).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert!(
            r.text.contains("<Bundle xmlns=\"http://hl7.org/fhir\">"),
            "{}",
            r.text
        );
    }
    // And it is valid XML through the same serialiser.
    let r = app.get("metadata?_format=xml").await;
    assert!(
        r.text
            .contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">"),
        "{}",
        &r.text[..200.min(r.text.len())]
    );
    assert_eq!(
        app.send(app.client.get(app.base.replace("/fhir", "/healthz")))
            .await
            .status,
        200
    );
}
both!(capability_statement);

//! PHD device profiles: a Device and Observations shaped like the HL7 Personal Health Device IG
//! (http://hl7.org/fhir/uv/phd/: PhdDevice, PhdNumericObservation,
//! PhdCompoundNumericObservation) as a gateway sends them, read back unchanged and found by the
//! references that tie a reading to its device and to the reading it was derived from.

use serde_json::Value;

use serde_json::json;

use super::client::{entries, ids, reference_of, require};
use super::runner::{Check, Group, Problem, ensure, fail};
use super::{Context, fixture, fixtures, patient, round_trips, string};

const MDC: &str = "urn:iso:std:iso:11073:10101";
const UCUM: &str = "http://unitsofmeasure.org";
/// The PhdDevice system-id identifier's system (IEEE EUI-64).
const SYSID: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";

pub async fn run(cx: &Context, g: &mut Group<'_>) {
    g.check("a PhdDevice round-trips", device(cx)).await;
    g.check(
        "a PhdNumericObservation (body weight) round-trips and is found by its device",
        weight(cx),
    )
    .await;
    g.check(
        "a blood pressure keeps its 8480-6/8462-4 components in mm[Hg] and is found by its MDC code",
        blood_pressure(cx),
    )
    .await;
    g.check(
        "a pulse rate derivedFrom the pressure round-trips and is found by derived-from",
        pulse_rate(cx),
    )
    .await;
    g.check(
        "a gateway's transaction sent twice stores the device and reading once",
        gateway_resend(cx),
    )
    .await;
}

/// A fresh IEEE EUI-64 system id, as the PHD IG writes it (`FE-ED-…`).
fn eui64() -> String {
    uuid::Uuid::new_v4().as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Creates `sent`, reads it back by id and checks that everything sent came back.
async fn round_trip(cx: &Context, sent: &Value) -> Result<Value, Problem> {
    let ty = sent["resourceType"].as_str().unwrap_or_default();
    let id = cx.create_id(sent).await?;
    let read = cx
        .fhir
        .get(&format!("{ty}/{id}"))
        .await?
        .resource(&[200], ty)?;
    round_trips(sent, &read, "").map_err(|d| fail(format!("{ty}/{id} read back differs: {d}")))?;
    Ok(read)
}

/// The ids a PHD reading needs: a Patient, a PhdDevice, the device's system id.
struct Setup {
    patient: String,
    device: String,
    eui64: String,
}

async fn setup(cx: &Context) -> Result<Setup, Problem> {
    let eui64 = eui64();
    let device = fixture(
        fixtures::PHD_DEVICE,
        &[("eui64", &eui64), ("unique", &cx.unique())],
    );
    Ok(Setup {
        patient: cx.create_id(&patient(&cx.unique())).await?,
        device: cx.create_id(&device).await?,
        eui64,
    })
}

/// A reading from `template` for `s`.
fn reading(cx: &Context, template: &str, s: &Setup, pressure: &str) -> Value {
    fixture(
        template,
        &[
            ("patient", &s.patient),
            ("device", &s.device),
            ("eui64", &s.eui64.replace('-', "")),
            ("unique", &cx.unique()),
            ("date", "2024-04-01T07:30:00Z"),
            ("pressure", pressure),
        ],
    )
}

/// PhdDevice: the SYSID identifier, MDC type, specialization and versions come back.
async fn device(cx: &Context) -> Check {
    require(cx.caps.interaction("Device", "create"), "create on Device")?;
    let sent = fixture(
        fixtures::PHD_DEVICE,
        &[("eui64", &eui64()), ("unique", &cx.unique())],
    );
    round_trip(cx, &sent).await?;
    Ok(())
}

async fn weight(cx: &Context) -> Check {
    require(cx.caps.interaction("Device", "create"), "create on Device")?;
    let s = setup(cx).await?;
    let read = round_trip(cx, &reading(cx, fixtures::PHD_WEIGHT, &s, "")).await?;
    let id = string(&read["id"], "an id")?;
    require(
        cx.caps.search_param("Observation", "device"),
        "Observation?device",
    )?;
    let q = format!("Observation?device=Device/{}", s.device);
    cx.fhir
        .expect_search(&q, "Observation", &[&id.to_owned()])
        .await?;
    Ok(())
}

/// The blood pressure panel: systolic 8480-6 and diastolic 8462-4 components with MDC codes,
/// UCUM mm[Hg] (the R4 vital-signs bp profile and the PHD IG's compound observation).
async fn blood_pressure(cx: &Context) -> Check {
    require(cx.caps.interaction("Device", "create"), "create on Device")?;
    let s = setup(cx).await?;
    let read = round_trip(cx, &reading(cx, fixtures::PHD_BP, &s, "")).await?;
    for (i, (mdc, loinc)) in [("150021", "8480-6"), ("150022", "8462-4")]
        .iter()
        .enumerate()
    {
        let c = &read["component"][i];
        let codes: Vec<(&str, &str)> = c["code"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| Some((x["system"].as_str()?, x["code"].as_str()?)))
            .collect();
        ensure!(
            codes.contains(&(MDC, mdc)) && codes.contains(&("http://loinc.org", loinc)),
            "component {i}: expected MDC {mdc} and LOINC {loinc}, got {codes:?}"
        );
        ensure!(
            c["valueQuantity"]["system"] == UCUM && c["valueQuantity"]["code"] == "mm[Hg]",
            "component {i}: expected a UCUM mm[Hg] quantity, got {}",
            c["valueQuantity"]
        );
    }
    let id = string(&read["id"], "an id")?.to_owned();
    let q = format!(
        "Observation?subject=Patient/{}&code={MDC}|150020",
        s.patient
    );
    cx.fhir.expect_search(&q, "Observation", &[&id]).await?;
    Ok(())
}

async fn pulse_rate(cx: &Context) -> Check {
    require(cx.caps.interaction("Device", "create"), "create on Device")?;
    let s = setup(cx).await?;
    let bp = cx.create_id(&reading(cx, fixtures::PHD_BP, &s, "")).await?;
    let read = round_trip(cx, &reading(cx, fixtures::PHD_PULSE, &s, &bp)).await?;
    let id = string(&read["id"], "an id")?.to_owned();
    require(
        cx.caps.search_param("Observation", "derived-from"),
        "Observation?derived-from",
    )?;
    let q = format!("Observation?derived-from=Observation/{bp}");
    cx.fhir.expect_search(&q, "Observation", &[&id]).await?;
    Ok(())
}

/// A PHD gateway uploads a Device and its reading in one transaction with conditional creates
/// on their identifiers (PHD IG "Uploading the data": de-duplication), so that a resend after a
/// lost answer stores nothing twice (https://hl7.org/fhir/R4/http.html#trules, `ifNoneExist`).
async fn gateway_resend(cx: &Context) -> Check {
    require(cx.caps.system_interaction("transaction"), "transaction")?;
    require(
        cx.caps.flag("Device", "conditionalCreate"),
        "conditionalCreate on Device",
    )?;
    let p = cx.create_id(&patient(&cx.unique())).await?;
    let eui64 = eui64();
    let unique = cx.unique();
    let device = fixture(
        fixtures::PHD_DEVICE,
        &[("eui64", &eui64), ("unique", &unique)],
    );
    let (device_url, obs_url) = (
        format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    );
    let mut obs = fixture(
        fixtures::PHD_WEIGHT,
        &[
            ("patient", &p),
            ("device", "x"),
            ("eui64", &eui64.replace('-', "")),
            ("unique", &unique),
            ("date", "2024-04-02T07:30:00Z"),
        ],
    );
    obs["device"] = json!({"reference": device_url});
    let obs_identifier = string(&obs["identifier"][0]["value"], "the reading's identifier")?;
    let device_search = format!("identifier={SYSID}|{eui64}");
    let obs_search = format!("identifier={obs_identifier}");
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": device_url, "resource": device,
             "request": {"method": "POST", "url": "Device", "ifNoneExist": device_search}},
            {"fullUrl": obs_url, "resource": obs,
             "request": {"method": "POST", "url": "Observation", "ifNoneExist": obs_search}}
        ]
    });
    for attempt in ["first", "second"] {
        let r = cx.fhir.post("", &bundle).await?;
        let b = r.resource(&[200], "Bundle")?;
        for e in b["entry"].as_array().into_iter().flatten() {
            if let Some(reference) = e["response"]["location"].as_str().and_then(reference_of) {
                cx.created(reference);
            }
        }
        let statuses: Vec<&str> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["response"]["status"].as_str().unwrap_or("?"))
            .collect();
        let want = if attempt == "first" { "201" } else { "200" };
        ensure!(
            statuses.len() == 2 && statuses.iter().all(|s| s.starts_with(want)),
            "the {attempt} upload: expected entry statuses [{want}, {want}], got {statuses:?}"
        );
    }
    let devices = ids(
        &cx.fhir.search(&format!("Device?{device_search}")).await?,
        "Device",
        "match",
    );
    let readings = cx.fhir.search(&format!("Observation?{obs_search}")).await?;
    let stored = entries(&readings);
    ensure!(
        devices.len() == 1 && stored.len() == 1,
        "expected one Device and one Observation after two uploads, found {} and {}",
        devices.len(),
        stored.len()
    );
    let device_id = devices
        .iter()
        .next()
        .map(String::as_str)
        .unwrap_or_default();
    ensure!(
        stored[0]["resource"]["device"]["reference"] == format!("Device/{device_id}").as_str(),
        "expected the reading's device to be Device/{device_id}, got {}",
        stored[0]["resource"]["device"]
    );
    Ok(())
}

//! PHD device profiles: a Device and Observations shaped like the HL7 Personal Health Device IG
//! (http://hl7.org/fhir/uv/phd/: PhdDevice, PhdNumericObservation,
//! PhdCompoundNumericObservation) as a gateway sends them, read back unchanged and found by the
//! references that tie a reading to its device and to the reading it was derived from.

use serde_json::Value;

use super::client::require;
use super::runner::{Check, Group, Problem, ensure, fail};
use super::{Context, fixture, fixtures, patient, round_trips, string};

const MDC: &str = "urn:iso:std:iso:11073:10101";
const UCUM: &str = "http://unitsofmeasure.org";

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

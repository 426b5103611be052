//! US-Core-style vital-signs searches
//! (https://hl7.org/fhir/us/core/STU6.1/StructureDefinition-us-core-vital-signs.html, "Mandatory
//! Search Parameters"): `patient` + `category`, `patient` + `code`, `patient` + `category` +
//! `date`, and `$lastn` (https://hl7.org/fhir/R4/observation-operation-lastn.html) where
//! advertised, each checked for exactly the right resources.

use serde_json::json;

use super::client::require;
use super::runner::{Check, Group, Problem};
use super::{Context, fixture, fixtures, patient, vital_sign};

const OBS: &str = "Observation";
const CATEGORIES: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

pub async fn run(cx: &Context, g: &mut Group<'_>) {
    g.check(
        "patient + category=vital-signs returns exactly the patient's vital signs",
        by_category(cx),
    )
    .await;
    g.check(
        "patient + code=85354-9 returns the blood pressure panel",
        by_code(cx),
    )
    .await;
    g.check(
        "patient + category + code list (OR) returns each code's readings",
        by_codes(cx),
    )
    .await;
    g.check(
        "patient + category + date=ge/lt returns the readings in the range",
        by_date(cx),
    )
    .await;
    g.check(
        "component-code-value-quantity finds blood pressures by systolic value",
        by_systolic(cx),
    )
    .await;
    g.check("$lastn returns the latest reading of each code", lastn(cx))
        .await;
}

/// One patient's readings, and another patient's and a laboratory result that no search of the
/// patient's vital signs may return.
struct Seeded {
    patient: String,
    bp: String,
    hr_early: String,
    hr_late: String,
    weight: String,
}

async fn seed(cx: &Context) -> Result<Seeded, Problem> {
    let p = cx.create_id(&patient(&cx.unique())).await?;
    let other = cx.create_id(&patient(&cx.unique())).await?;
    let mut bp = fixture(
        fixtures::PHD_BP,
        &[
            ("patient", &p),
            ("device", "x"),
            ("eui64", "x"),
            ("unique", &cx.unique()),
            ("date", "2024-03-01T08:00:00Z"),
        ],
    );
    // A reading taken in the clinic: no device, no PHD profile claimed (a PHD Observation
    // names its device).
    if let Some(o) = bp.as_object_mut() {
        for key in ["meta", "device", "identifier"] {
            o.remove(key);
        }
    }
    let mut lab = vital_sign(&p, "2339-0", "5.4", "mmol/L", "2024-03-04T08:00:00Z");
    lab["category"][0]["coding"][0]["code"] = json!("laboratory");
    let seeded = Seeded {
        bp: cx.create_id(&bp).await?,
        hr_early: cx
            .create_id(&vital_sign(
                &p,
                "8867-4",
                "61",
                "/min",
                "2024-03-01T08:00:00Z",
            ))
            .await?,
        hr_late: cx
            .create_id(&vital_sign(
                &p,
                "8867-4",
                "66",
                "/min",
                "2024-03-05T08:00:00Z",
            ))
            .await?,
        weight: cx
            .create_id(&vital_sign(
                &p,
                "29463-7",
                "70.5",
                "kg",
                "2024-03-03T08:00:00Z",
            ))
            .await?,
        patient: p,
    };
    cx.create_id(&lab).await?;
    cx.create_id(&vital_sign(
        &other,
        "8867-4",
        "90",
        "/min",
        "2024-03-05T08:00:00Z",
    ))
    .await?;
    Ok(seeded)
}

fn vital_signs_params(cx: &Context) -> Result<(), Problem> {
    for p in ["patient", "category"] {
        require(
            cx.caps.search_param("Observation", p),
            &format!("Observation?{p}"),
        )?;
    }
    Ok(())
}

async fn by_category(cx: &Context) -> Check {
    vital_signs_params(cx)?;
    let s = seed(cx).await?;
    let all = [&s.bp, &s.hr_early, &s.hr_late, &s.weight];
    let p = &s.patient;
    cx.fhir
        .expect_search(
            &format!("Observation?patient={p}&category=vital-signs"),
            OBS,
            &all,
        )
        .await?;
    cx.fhir
        .expect_search(
            &format!("Observation?patient={p}&category={CATEGORIES}|vital-signs"),
            OBS,
            &all,
        )
        .await?;
    Ok(())
}

async fn by_code(cx: &Context) -> Check {
    require(
        cx.caps.search_param("Observation", "code"),
        "Observation?code",
    )?;
    let s = seed(cx).await?;
    for code in ["85354-9", "http://loinc.org|85354-9"] {
        let q = format!("Observation?patient={}&code={code}", s.patient);
        cx.fhir.expect_search(&q, OBS, &[&s.bp]).await?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#combining: a comma is OR.
async fn by_codes(cx: &Context) -> Check {
    vital_signs_params(cx)?;
    let s = seed(cx).await?;
    let q = format!(
        "Observation?patient={}&category=vital-signs&code=http://loinc.org|8867-4,http://loinc.org|29463-7",
        s.patient
    );
    cx.fhir
        .expect_search(&q, OBS, &[&s.hr_early, &s.hr_late, &s.weight])
        .await?;
    Ok(())
}

async fn by_date(cx: &Context) -> Check {
    vital_signs_params(cx)?;
    let s = seed(cx).await?;
    let q = format!("Observation?patient={}&category=vital-signs", s.patient);
    cx.fhir
        .expect_search(
            &format!("{q}&date=ge2024-03-03"),
            OBS,
            &[&s.hr_late, &s.weight],
        )
        .await?;
    cx.fhir
        .expect_search(
            &format!("{q}&date=lt2024-03-03"),
            OBS,
            &[&s.bp, &s.hr_early],
        )
        .await?;
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#composite: a systolic threshold, as an RPM alert list
/// asks it (the seeded pressure is 128/82 mm[Hg]).
async fn by_systolic(cx: &Context) -> Check {
    let param = "component-code-value-quantity";
    require(
        cx.caps.search_param("Observation", param),
        &format!("Observation?{param}"),
    )?;
    let s = seed(cx).await?;
    let q = format!(
        "Observation?patient={}&{param}=http://loinc.org|8480-6$",
        s.patient
    );
    cx.fhir
        .expect_search(&format!("{q}gt120"), OBS, &[&s.bp])
        .await?;
    cx.fhir
        .expect_search(&format!("{q}gt130"), OBS, &[])
        .await?;
    Ok(())
}

/// https://hl7.org/fhir/R4/observation-operation-lastn.html: the most recent `max` (default 1)
/// Observations of each code.
async fn lastn(cx: &Context) -> Check {
    if !cx.caps.operation("Observation", "lastn") {
        return Err(Problem::Skip(
            "the CapabilityStatement does not list the Observation $lastn operation".into(),
        ));
    }
    let s = seed(cx).await?;
    let q = format!(
        "Observation/$lastn?patient={}&category=vital-signs",
        s.patient
    );
    cx.fhir
        .expect_search(&q, OBS, &[&s.bp, &s.hr_late, &s.weight])
        .await?;
    cx.fhir
        .expect_search(
            &format!("{q}&code=8867-4&max=2"),
            OBS,
            &[&s.hr_early, &s.hr_late],
        )
        .await?;
    Ok(())
}

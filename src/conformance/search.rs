//! Search (https://hl7.org/fhir/R4/search.html): each parameter kind, paging, sorting,
//! includes, totals and the handling of unknown parameters, on data each check makes for itself
//! so that the expected results are exactly known.

use std::collections::BTreeSet;

use serde_json::Value;

use super::client::{entries, expect_ids, ids, link, require};
use super::runner::{Check, Group, Problem, ensure};
use super::{Context, patient, vital_sign};

pub async fn run(cx: &Context, g: &mut Group<'_>) {
    g.check("_id finds exactly the resource", by_id(cx)).await;
    g.check(
        "POST [type]/_search with a form body finds what GET finds",
        post_search(cx),
    )
    .await;
    g.check("token system|code finds by identifier", token(cx))
        .await;
    g.check(
        "reference subject=Patient/[id] finds that patient's Observations",
        reference(cx),
    )
    .await;
    g.check("date prefixes ge and lt bound the results", date(cx))
        .await;
    g.check(
        "string matches a case-insensitive prefix, :exact does not",
        string_search(cx),
    )
    .await;
    g.check(
        "_count pages through next links without repeats",
        paging(cx),
    )
    .await;
    g.check("_sort orders by date, ascending and descending", sort(cx))
        .await;
    g.check("_include adds the referenced Patient", include(cx))
        .await;
    g.check(
        "_revinclude adds the Observations that reference the Patient",
        revinclude(cx),
    )
    .await;
    g.check(
        "_lastUpdated bounds by the time of the write",
        last_updated(cx),
    )
    .await;
    g.check("_total=accurate counts the matches", total(cx))
        .await;
    g.check(
        "_summary=count returns the count without entries",
        summary_count(cx),
    )
    .await;
    g.check(
        "an unknown parameter is ignored with Prefer: handling=lenient",
        lenient(cx),
    )
    .await;
    g.check(
        "an unknown parameter is refused with Prefer: handling=strict",
        strict(cx),
    )
    .await;
}

/// A Patient and heart rates of it at `dates`: the patient's id and the Observations' ids in
/// the order of `dates`.
async fn patient_with_readings(
    cx: &Context,
    dates: &[&str],
) -> Result<(String, Vec<String>), Problem> {
    let p = cx.create_id(&patient(&cx.unique())).await?;
    let mut obs = Vec::new();
    for (i, date) in dates.iter().enumerate() {
        let value = (60 + i).to_string();
        obs.push(
            cx.create_id(&vital_sign(&p, "8867-4", &value, "/min", date))
                .await?,
        );
    }
    Ok((p, obs))
}

/// The ids of a search's match entries in the order the server returned them.
fn ordered(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == "match" || e["search"]["mode"].is_null())
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

/// https://hl7.org/fhir/R4/search.html#id
async fn by_id(cx: &Context) -> Check {
    let a = cx.create_id(&patient(&cx.unique())).await?;
    cx.create_id(&patient(&cx.unique())).await?;
    cx.fhir
        .expect_search(&format!("Patient?_id={a}"), "Patient", &[&a])
        .await?;
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#search: servers SHALL support search by POST to
/// `[type]/_search` with `application/x-www-form-urlencoded` parameters, also mixed with URL ones.
async fn post_search(cx: &Context) -> Check {
    let unique = cx.unique();
    let a = cx.create_id(&patient(&unique)).await?;
    cx.create_id(&patient(&cx.unique())).await?;
    let identifier = format!("urn:ietf:rfc:3986|urn:uuid:{unique}");
    for (url, form) in [
        (
            "Patient/_search".to_owned(),
            vec![("identifier", identifier.as_str())],
        ),
        (format!("Patient/_search?_id={a}"), vec![("active", "true")]),
    ] {
        let r = cx
            .fhir
            .send(cx.fhir.request(reqwest::Method::POST, &url).form(&form))
            .await?;
        let b = r.resource(&[200], "Bundle")?;
        expect_ids(&b, "Patient", &[&a], &format!("POST {url} with {form:?}"))?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#token: `[system]|[code]`; the same value under another
/// system is not a match.
async fn token(cx: &Context) -> Check {
    require(
        cx.caps.search_param("Patient", "identifier"),
        "Patient?identifier",
    )?;
    let unique = cx.unique();
    let a = cx.create_id(&patient(&unique)).await?;
    cx.create_id(&patient(&cx.unique())).await?;
    for (system, want) in [("urn:ietf:rfc:3986", vec![&a]), ("urn:other", vec![])] {
        let q = format!("Patient?identifier={system}|urn:uuid:{unique}");
        cx.fhir.expect_search(&q, "Patient", &want).await?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#reference: `Type/id` and the bare id.
async fn reference(cx: &Context) -> Check {
    require(
        cx.caps.search_param("Observation", "subject"),
        "Observation?subject",
    )?;
    let (p, obs) =
        patient_with_readings(cx, &["2024-01-01T08:00:00Z", "2024-01-02T08:00:00Z"]).await?;
    patient_with_readings(cx, &["2024-01-01T08:00:00Z"]).await?;
    let want: Vec<&String> = obs.iter().collect();
    for value in [format!("Patient/{p}"), p.clone()] {
        let q = format!("Observation?subject={value}");
        cx.fhir.expect_search(&q, "Observation", &want).await?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#prefix
async fn date(cx: &Context) -> Check {
    require(
        cx.caps.search_param("Observation", "date"),
        "Observation?date",
    )?;
    let (p, o) = patient_with_readings(
        cx,
        &[
            "2020-01-10T08:00:00Z",
            "2020-02-10T08:00:00Z",
            "2020-03-10T08:00:00Z",
        ],
    )
    .await?;
    for (params, want) in [
        ("date=ge2020-02-01", vec![&o[1], &o[2]]),
        ("date=lt2020-02-01", vec![&o[0]]),
        ("date=ge2020-02-01&date=lt2020-03-01", vec![&o[1]]),
        ("date=ge2020-02-10T08:00:00Z", vec![&o[1], &o[2]]),
        ("date=lt2020-02-10T08:00:00Z", vec![&o[0]]),
    ] {
        let q = format!("Observation?subject=Patient/{p}&{params}");
        cx.fhir.expect_search(&q, "Observation", &want).await?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#string: starts-with, case- and accent-insensitive;
/// `:exact` matches the whole string, case and all.
async fn string_search(cx: &Context) -> Check {
    require(cx.caps.search_param("Patient", "family"), "Patient?family")?;
    let unique = cx.unique();
    let a = cx.create_id(&patient(&unique)).await?;
    let prefix = format!("conformance{}", &unique[..20]);
    for (q, want) in [
        (format!("Patient?family={prefix}"), vec![&a]),
        (format!("Patient?family:exact={prefix}"), vec![]),
        (
            format!("Patient?family:exact=Conformance{unique}"),
            vec![&a],
        ),
    ] {
        cx.fhir.expect_search(&q, "Patient", &want).await?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#paging: `_count` pages linked by `next`.
async fn paging(cx: &Context) -> Check {
    let dates: Vec<String> = (1..=5).map(|d| format!("2021-05-0{d}T08:00:00Z")).collect();
    let (p, obs) =
        patient_with_readings(cx, &dates.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let mut url = format!("Observation?subject=Patient/{p}&_count=2");
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let b = cx.fhir.search(&url).await?;
        let page = ordered(&b);
        pages += 1;
        ensure!(
            page.len() <= 2,
            "page {pages} has {} entries though _count=2",
            page.len()
        );
        seen.extend(page);
        match link(&b, "next") {
            Some(next) if pages < 10 => url = next,
            Some(_) => return Err(super::runner::fail("more than 10 pages for 5 results")),
            None => break,
        }
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    let want: BTreeSet<&String> = obs.iter().collect();
    ensure!(
        distinct.len() == seen.len() && distinct == want && pages == 3,
        "expected the 5 Observations once each over 3 pages, got {seen:?} over {pages} pages"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#sort
async fn sort(cx: &Context) -> Check {
    let (p, o) = patient_with_readings(
        cx,
        &[
            "2022-02-01T08:00:00Z",
            "2022-03-01T08:00:00Z",
            "2022-01-01T08:00:00Z",
        ],
    )
    .await?;
    let q = format!("Observation?subject=Patient/{p}");
    let ascending = vec![o[2].clone(), o[0].clone(), o[1].clone()];
    let got = ordered(&cx.fhir.search(&format!("{q}&_sort=date")).await?);
    ensure!(
        got == ascending,
        "_sort=date: expected {ascending:?}, got {got:?}"
    );
    let descending: Vec<String> = ascending.into_iter().rev().collect();
    let got = ordered(&cx.fhir.search(&format!("{q}&_sort=-date")).await?);
    ensure!(
        got == descending,
        "_sort=-date: expected {descending:?}, got {got:?}"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#include
async fn include(cx: &Context) -> Check {
    require(
        cx.caps
            .include("Observation", "searchInclude", "Observation:subject"),
        "_include=Observation:subject",
    )?;
    let (p, o) = patient_with_readings(cx, &["2023-01-01T08:00:00Z"]).await?;
    let q = format!("Observation?_id={}&_include=Observation:subject", o[0]);
    let b = cx.fhir.expect_search(&q, "Observation", &[&o[0]]).await?;
    let included = ids(&b, "Patient", "include");
    ensure!(
        included == BTreeSet::from([p.clone()]),
        "expected Patient/{p} with search.mode include, got included Patients {included:?}"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#revinclude
async fn revinclude(cx: &Context) -> Check {
    require(
        cx.caps
            .include("Patient", "searchRevInclude", "Observation:subject"),
        "_revinclude=Observation:subject on Patient",
    )?;
    let (p, o) =
        patient_with_readings(cx, &["2023-01-01T08:00:00Z", "2023-01-02T08:00:00Z"]).await?;
    let q = format!("Patient?_id={p}&_revinclude=Observation:subject");
    let b = cx.fhir.expect_search(&q, "Patient", &[&p]).await?;
    let included = ids(&b, "Observation", "include");
    let want: BTreeSet<String> = o.into_iter().collect();
    ensure!(
        included == want,
        "expected the Observations {want:?} with search.mode include, got {included:?}"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#lastUpdated: `meta.lastUpdated`, with prefixes.
async fn last_updated(cx: &Context) -> Check {
    let created = cx.create(&patient(&cx.unique())).await?;
    let id = super::string(&created["id"], "an id")?.to_owned();
    let at = super::string(&created["meta"]["lastUpdated"], "meta.lastUpdated")?;
    // A `+01:00` offset must reach the server as it is, not as a space.
    let at: String = url::form_urlencoded::byte_serialize(at.as_bytes()).collect();
    for (prefix, want) in [("ge", vec![&id]), ("lt", vec![]), ("le", vec![&id])] {
        let q = format!("Patient?_id={id}&_lastUpdated={prefix}{at}");
        cx.fhir.expect_search(&q, "Patient", &want).await?;
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#total
async fn total(cx: &Context) -> Check {
    let (p, _) = patient_with_readings(
        cx,
        &[
            "2023-02-01T08:00:00Z",
            "2023-02-02T08:00:00Z",
            "2023-02-03T08:00:00Z",
        ],
    )
    .await?;
    let b = cx
        .fhir
        .search(&format!(
            "Observation?subject=Patient/{p}&_total=accurate&_count=1"
        ))
        .await?;
    ensure!(
        b["total"] == 3,
        "expected Bundle.total 3 with _total=accurate (one entry per page), got {}",
        b["total"]
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#summary: `count` returns only the total.
async fn summary_count(cx: &Context) -> Check {
    let (p, _) =
        patient_with_readings(cx, &["2023-03-01T08:00:00Z", "2023-03-02T08:00:00Z"]).await?;
    let b = cx
        .fhir
        .search(&format!("Observation?subject=Patient/{p}&_summary=count"))
        .await?;
    ensure!(
        b["total"] == 2 && entries(&b).is_empty(),
        "expected total 2 and no entries, got total {} and {} entries",
        b["total"],
        entries(&b).len()
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#errors: lenient handling ignores what it does not know.
async fn lenient(cx: &Context) -> Check {
    let a = cx.create_id(&patient(&cx.unique())).await?;
    let r = cx
        .fhir
        .send(
            cx.fhir
                .request(
                    reqwest::Method::GET,
                    &format!("Patient?_id={a}&vb-no-such-parameter=1"),
                )
                .header("prefer", "handling=lenient"),
        )
        .await?;
    let b = r.resource(&[200], "Bundle")?;
    expect_ids(&b, "Patient", &[&a], "with an unknown parameter, lenient")?;
    if let Some(own) = link(&b, "self") {
        ensure!(
            !own.contains("vb-no-such-parameter"),
            "the self link should show the parameters used, without the ignored one: {own}"
        );
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/search.html#errors: strict handling refuses what it does not know.
async fn strict(cx: &Context) -> Check {
    let a = cx.create_id(&patient(&cx.unique())).await?;
    let r = cx
        .fhir
        .send(
            cx.fhir
                .request(
                    reqwest::Method::GET,
                    &format!("Patient?_id={a}&vb-no-such-parameter=1"),
                )
                .header("prefer", "handling=strict"),
        )
        .await?;
    r.expect_outcome(&[400])
}

//! The shape of search results: `_sort`, paging and its stability, `_count`, `_total`,
//! `_summary`, `_elements`, `POST [type]/_search`, system-level search and the handling of
//! unknown or malformed parameters (https://hl7.org/fhir/R4/search.html#sort, #count, #total,
//! #summary, #elements, #errors).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{
    bundle, check, check_order, encode_query, entries, follow, get_prefer, ids, last_updated, link,
    loinc, match_ids, modify, outcome_text, put, query_pairs, refs, search_url, searchset, sorted,
    tick, ucum, vital_signs,
};

const SORT: &str = "identifier=urn:vb:sort|";

/// Five Patients for sorting, written in this order; their ids sort differently again.
async fn seed(app: &TestApp) {
    for (id, family, birth, gender) in [
        ("s-c", "Adams", "1980-01-01", "female"),
        ("s-e", "Smith", "1950-04-01", "male"),
        ("s-a", "Smith", "1970-07-07", "female"),
        ("s-d", "Brown", "1960-06-06", "male"),
        ("s-b", "Smith", "1990-09-09", "male"),
    ] {
        put(
            app,
            json!({"resourceType": "Patient", "id": id,
                   "identifier": [{"system": "urn:vb:sort", "value": id}],
                   "name": [{"family": family, "given": ["Pat"]}],
                   "gender": gender, "birthDate": birth}),
        )
        .await;
        tick().await;
    }
}

async fn sort_orders(app: TestApp) {
    seed(&app).await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=birthdate"),
        &["s-e", "s-d", "s-a", "s-c", "s-b"],
    )
    .await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=-birthdate"),
        &["s-b", "s-c", "s-a", "s-d", "s-e"],
    )
    .await;
    // Several keys: family, then birth date descending within a family.
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=family,-birthdate"),
        &["s-c", "s-d", "s-b", "s-a", "s-e"],
    )
    .await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=family,birthdate"),
        &["s-c", "s-d", "s-e", "s-a", "s-b"],
    )
    .await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=_id"),
        &["s-a", "s-b", "s-c", "s-d", "s-e"],
    )
    .await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=-_id"),
        &["s-e", "s-d", "s-c", "s-b", "s-a"],
    )
    .await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=_lastUpdated"),
        &["s-c", "s-e", "s-a", "s-d", "s-b"],
    )
    .await;
    // Sorting with a filter.
    check_order(
        &app,
        &format!("Patient?{SORT}&gender=male&_sort=-birthdate"),
        &["s-b", "s-d", "s-e"],
    )
    .await;
    // An update makes s-c the most recently updated.
    modify(&app, "Patient", "s-c", |p| p["active"] = json!(true)).await;
    check_order(
        &app,
        &format!("Patient?{SORT}&_sort=-_lastUpdated"),
        &["s-c", "s-b", "s-d", "s-a", "s-e"],
    )
    .await;
    // The order holds across pages.
    let mut url = search_url(&app, &format!("Patient?{SORT}&_sort=birthdate&_count=2"));
    let mut walked = Vec::new();
    loop {
        let page = follow(&app, &url).await;
        walked.extend(match_ids(&page));
        match link(&page, "next") {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(walked, ["s-e", "s-d", "s-a", "s-c", "s-b"]);
}
both!(sort_orders);

async fn paging_links_and_stability(app: TestApp) {
    seed(&app).await;
    let first_url = search_url(&app, &format!("Patient?{SORT}&_count=2"));
    let page1 = follow(&app, &first_url).await;
    assert_eq!(page1["total"], 5, "{page1}");
    assert_eq!(match_ids(&page1).len(), 2, "{page1}");
    for rel in ["self", "first", "next"] {
        assert!(
            link(&page1, rel).is_some(),
            "page 1 has a {rel} link: {page1}"
        );
    }
    assert!(link(&page1, "previous").is_none(), "{page1}");
    // The links keep the criteria.
    let next = link(&page1, "next").expect("next");
    assert!(
        query_pairs(&next)
            .iter()
            .any(|(k, v)| k == "identifier" && v == "urn:vb:sort|"),
        "{next}"
    );

    // Writes between the pages: a new match, an update of a match already returned, an update
    // of one not returned yet, and an unrelated Patient.
    let seen_first = match_ids(&page1);
    put(
        &app,
        json!({"resourceType": "Patient", "id": "s-late",
               "identifier": [{"system": "urn:vb:sort", "value": "s-late"}]}),
    )
    .await;
    modify(&app, "Patient", &seen_first[0], |p| {
        p["active"] = json!(false)
    })
    .await;
    let unseen = ["s-a", "s-b", "s-c", "s-d", "s-e"]
        .into_iter()
        .find(|id| !seen_first.iter().any(|s| s == id))
        .expect("an unseen id");
    modify(&app, "Patient", unseen, |p| p["active"] = json!(true)).await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "unrelated", "active": true}),
    )
    .await;

    let page2 = follow(&app, &next).await;
    for rel in ["self", "first", "previous"] {
        assert!(
            link(&page2, rel).is_some(),
            "page 2 has a {rel} link: {page2}"
        );
    }
    // previous leads back to the first page's matches.
    let back = follow(&app, &link(&page2, "previous").expect("previous")).await;
    assert_eq!(match_ids(&back), seen_first, "{back}");

    // Walk to the end: every match that existed at the first page, exactly once.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for id in &seen_first {
        *seen.entry(id.clone()).or_default() += 1;
    }
    let mut page = page2;
    let mut pages = 2;
    loop {
        let ids = match_ids(&page);
        assert!(ids.len() <= 2, "at most _count matches per page: {page}");
        for id in ids {
            *seen.entry(id).or_default() += 1;
        }
        match link(&page, "next") {
            Some(n) => {
                page = follow(&app, &n).await;
                pages += 1;
                assert!(pages < 10, "the next links do not end");
            }
            None => break,
        }
    }
    assert!(link(&page, "previous").is_some(), "the last page: {page}");
    for id in ["s-a", "s-b", "s-c", "s-d", "s-e"] {
        assert_eq!(seen.get(id), Some(&1), "{id} once in the walk: {seen:?}");
    }
    let others: BTreeSet<&String> = seen
        .keys()
        .filter(|k| !["s-a", "s-b", "s-c", "s-d", "s-e", "s-late"].contains(&k.as_str()))
        .collect();
    assert!(others.is_empty(), "{seen:?}");
    assert!(seen.get("s-late").is_none_or(|n| *n == 1), "{seen:?}");
}
both!(paging_links_and_stability);

/// Walks the `next` links from `url`, returning the matches page by page.
async fn walk(app: &TestApp, url: &str, between: &mut Vec<Value>) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut url = url.to_owned();
    loop {
        let page = follow(app, &url).await;
        pages.push(match_ids(&page));
        // A write queued by the caller lands between this page and the next.
        if let Some(p) = between.pop() {
            put(app, p).await;
        }
        match link(&page, "next") {
            Some(next) => url = next,
            None => break,
        }
        assert!(pages.len() < 20, "the next links do not end");
    }
    pages
}

/// Under `_sort`, paging links go on from the sort values of the last resource shown: writes
/// between page requests that sort before it neither repeat a resource on the next page nor
/// skip one (an offset would do both), on every kind of key, ascending and descending, with
/// resources that have no value (last either way) and through `previous` links.
async fn sorted_paging_survives_writes(app: TestApp) {
    seed(&app).await;
    // Two without a birth date: they sort last whatever the direction.
    for id in ["s-n1", "s-n2"] {
        put(
            &app,
            json!({"resourceType": "Patient", "id": id,
                   "identifier": [{"system": "urn:vb:sort", "value": id}],
                   "name": [{"family": "Nobody"}]}),
        )
        .await;
    }
    let early = |id: &str, birth: &str| {
        json!({"resourceType": "Patient", "id": id,
               "identifier": [{"system": "urn:vb:sort", "value": id}],
               "name": [{"family": "Aaron"}], "birthDate": birth})
    };
    for (query, expected, sooner) in [
        (
            "_sort=birthdate",
            vec!["s-e", "s-d", "s-a", "s-c", "s-b", "s-n1", "s-n2"],
            "1900-01-01",
        ),
        (
            "_sort=-birthdate",
            vec!["s-b", "s-c", "s-a", "s-d", "s-e", "s-n1", "s-n2"],
            "2020-01-01",
        ),
        (
            "_sort=family,-birthdate",
            vec!["s-c", "s-d", "s-n1", "s-n2", "s-b", "s-a", "s-e"],
            "2020-01-01",
        ),
    ] {
        // Undisturbed, the walk gives the order in pages of two.
        let url = search_url(&app, &format!("Patient?{SORT}&{query}&_count=2"));
        let pages = walk(&app, &url, &mut Vec::new()).await;
        assert_eq!(pages.concat(), expected, "{query}: {pages:?}");
        assert!(pages.iter().all(|p| p.len() <= 2), "{pages:?}");

        // After each page, a new Patient that sorts before everything shown.
        let tag = query.replace(['=', ',', '-', '_'], "");
        let mut between: Vec<Value> = (0..3)
            .map(|i| early(&format!("s-early-{tag}-{i}"), sooner))
            .collect();
        let pages = walk(&app, &url, &mut between).await;
        assert_eq!(
            pages.concat(),
            expected,
            "{query}: the resources there at the start, once each, in order: {pages:?}"
        );
        for i in 0..3 {
            assert_eq!(
                app.delete(&format!("Patient/s-early-{tag}-{i}"))
                    .await
                    .status,
                204
            );
        }
    }

    // `previous` from the third page gives the second again; from the second, the first.
    let url = search_url(&app, &format!("Patient?{SORT}&_sort=-birthdate&_count=2"));
    let p1 = follow(&app, &url).await;
    let p2 = follow(&app, &link(&p1, "next").expect("next")).await;
    let p3 = follow(&app, &link(&p2, "next").expect("next")).await;
    assert_eq!(match_ids(&p3), ["s-e", "s-n1"], "{p3}");
    let back2 = follow(&app, &link(&p3, "previous").expect("previous")).await;
    assert_eq!(match_ids(&back2), match_ids(&p2));
    let back1 = follow(&app, &link(&back2, "previous").expect("previous")).await;
    assert_eq!(match_ids(&back1), match_ids(&p1));
    assert_eq!(match_ids(&p1), ["s-b", "s-c"]);
    // From the page of nulls backwards, and forwards from it.
    let p4 = follow(&app, &link(&p3, "next").expect("next")).await;
    assert_eq!(match_ids(&p4), ["s-n2"], "{p4}");
    let back3 = follow(&app, &link(&p4, "previous").expect("previous")).await;
    assert_eq!(match_ids(&back3), ["s-e", "s-n1"], "{back3}");

    // A cursor made for another sort is refused under strict handling, and ignored otherwise.
    let next = link(&p1, "next").expect("next");
    let other = next.replace("_sort=-birthdate", "_sort=family");
    assert_ne!(other, next);
    let strict = app
        .send(app.client.get(&other).header("Prefer", "handling=strict"))
        .await;
    assert_eq!(strict.status, 400, "{}", strict.text);
    assert!(strict.text.contains("_cursor"), "{}", strict.text);
    let lenient = follow(&app, &other).await;
    assert_eq!(
        match_ids(&lenient),
        ["s-c", "s-d"],
        "the first page: {lenient}"
    );

    // Decimal and _lastUpdated keys page the same way.
    let pid = put(&app, json!({"resourceType": "Patient", "id": "s-obs"})).await;
    assert_eq!(pid["id"], "s-obs");
    for (i, v) in [72.5, 60.0, 88.25, 60.0, 101.0].iter().enumerate() {
        put(
            &app,
            json!({"resourceType": "Observation", "id": format!("s-hr-{i}"), "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "subject": {"reference": "Patient/s-obs"},
                   "valueQuantity": {"value": v, "unit": "/min",
                                     "system": "http://unitsofmeasure.org", "code": "/min"}}),
        )
        .await;
        tick().await;
    }
    let url = search_url(
        &app,
        "Observation?subject=Patient/s-obs&_sort=-value-quantity&_count=2",
    );
    let pages = walk(&app, &url, &mut Vec::new()).await;
    assert_eq!(
        pages.concat(),
        ["s-hr-4", "s-hr-2", "s-hr-0", "s-hr-1", "s-hr-3"],
        "{pages:?}"
    );
    let url = search_url(
        &app,
        "Observation?subject=Patient/s-obs&_sort=-_lastUpdated&_count=2",
    );
    let pages = walk(&app, &url, &mut Vec::new()).await;
    assert_eq!(
        pages.concat(),
        ["s-hr-4", "s-hr-3", "s-hr-2", "s-hr-1", "s-hr-0"],
        "{pages:?}"
    );
}
both!(sorted_paging_survives_writes);

async fn count_and_total(app: TestApp) {
    seed(&app).await;
    // _count=0: the count only.
    let b = bundle(&app, &format!("Patient?{SORT}&_count=0")).await;
    assert_eq!(b["total"], 5, "{b}");
    assert!(entries(&b, "match").is_empty(), "{b}");
    let b = bundle(&app, &format!("Patient?{SORT}&_summary=count")).await;
    assert_eq!(b["total"], 5, "{b}");
    assert!(
        b["entry"].as_array().is_none_or(|e| e.is_empty()),
        "_summary=count has no entries: {b}"
    );
    let b = bundle(&app, &format!("Patient?{SORT}&gender=male&_summary=count")).await;
    assert_eq!(b["total"], 3, "{b}");

    // _total: none → no total; accurate → the exact count, also on a partial page; estimate →
    // a number.
    let b = bundle(&app, &format!("Patient?{SORT}&_total=none")).await;
    assert!(b.get("total").is_none(), "{b}");
    assert_eq!(match_ids(&b).len(), 5, "{b}");
    let b = bundle(&app, &format!("Patient?{SORT}&_total=accurate&_count=2")).await;
    assert_eq!(b["total"], 5, "{b}");
    assert_eq!(match_ids(&b).len(), 2, "{b}");
    let b = bundle(
        &app,
        &format!("Patient?{SORT}&gender=female&_total=accurate"),
    )
    .await;
    assert_eq!(b["total"], 2, "{b}");
    let b = bundle(&app, &format!("Patient?{SORT}&_total=estimate")).await;
    assert!(b["total"].is_u64(), "{b}");
    // _count bounds the page.
    let b = bundle(&app, &format!("Patient?{SORT}&_count=3")).await;
    assert_eq!(match_ids(&b).len(), 3, "{b}");
    assert_eq!(b["total"], 5, "{b}");
}
both!(count_and_total);

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn subsetted(v: &Value) -> bool {
    v["meta"]["tag"].as_array().is_some_and(|tags| {
        tags.iter().any(|t| {
            t["code"] == "SUBSETTED"
                && t["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
        })
    })
}

/// The single match of GET `query`.
async fn only_match(app: &TestApp, query: &str) -> Value {
    let b = bundle(app, query).await;
    let m = entries(&b, "match");
    assert_eq!(m.len(), 1, "GET {query}\n{b}");
    m[0]["resource"].clone()
}

async fn summary_and_elements(app: TestApp) {
    let narrative = json!({"status": "generated",
        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ada Summary</div>"});
    put(
        &app,
        json!({"resourceType": "Patient", "id": "sum-p", "text": narrative,
               "identifier": [{"system": "urn:vb:test", "value": "sum"}],
               "name": [{"family": "Summary", "given": ["Ada"]}],
               "gender": "female", "birthDate": "1950-04-01",
               "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
               "contact": [{"name": {"family": "Kin"}}]}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "sum-o", "text": narrative,
               "status": "final",
               "category": vital_signs(),
               "code": loinc("8867-4", "Heart rate"),
               "subject": {"reference": "Patient/sum-p"},
               "valueQuantity": ucum(72.0, "/min"),
               "note": [{"text": "after exercise"}]}),
    )
    .await;

    // _summary=true: the elements marked summary in R4 (Patient: identifier, name, gender,
    // birthDate here; not text, maritalStatus or contact).
    let p = only_match(&app, "Patient?_id=sum-p&_summary=true").await;
    assert_eq!(
        keys(&p),
        set(&[
            "resourceType",
            "id",
            "meta",
            "identifier",
            "name",
            "gender",
            "birthDate"
        ]),
        "{p}"
    );
    assert!(subsetted(&p), "{p}");
    let o = only_match(&app, "Observation?_id=sum-o&_summary=true").await;
    assert_eq!(
        keys(&o),
        set(&[
            "resourceType",
            "id",
            "meta",
            "status",
            "code",
            "subject",
            "valueQuantity"
        ]),
        "{o}"
    );
    // _summary=text: text, id, meta and the mandatory top-level elements.
    let p = only_match(&app, "Patient?_id=sum-p&_summary=text").await;
    assert_eq!(
        keys(&p),
        set(&["resourceType", "id", "meta", "text"]),
        "{p}"
    );
    assert!(subsetted(&p), "{p}");
    let o = only_match(&app, "Observation?_id=sum-o&_summary=text").await;
    assert_eq!(
        keys(&o),
        set(&["resourceType", "id", "meta", "text", "status", "code"]),
        "{o}"
    );
    // _summary=data: everything but the text.
    let p = only_match(&app, "Patient?_id=sum-p&_summary=data").await;
    assert_eq!(
        keys(&p),
        set(&[
            "resourceType",
            "id",
            "meta",
            "identifier",
            "name",
            "gender",
            "birthDate",
            "maritalStatus",
            "contact"
        ]),
        "{p}"
    );
    assert!(subsetted(&p), "{p}");
    // _summary=false and no _summary: the whole resource, not marked.
    for q in ["Patient?_id=sum-p&_summary=false", "Patient?_id=sum-p"] {
        let p = only_match(&app, q).await;
        assert!(p.get("contact").is_some() && p.get("text").is_some(), "{p}");
        assert!(!subsetted(&p), "{p}");
    }
    // _elements: the listed elements plus id and meta (Patient has no mandatory elements).
    let p = only_match(&app, "Patient?_id=sum-p&_elements=name").await;
    assert_eq!(
        keys(&p),
        set(&["resourceType", "id", "meta", "name"]),
        "{p}"
    );
    assert_eq!(p["name"][0]["family"], "Summary");
    assert!(subsetted(&p), "{p}");
    let p = only_match(&app, "Patient?_id=sum-p&_elements=name,birthDate").await;
    assert_eq!(
        keys(&p),
        set(&["resourceType", "id", "meta", "name", "birthDate"]),
        "{p}"
    );
    // The stored resource is untouched.
    let stored = app.get("Patient/sum-p").await.json();
    assert!(
        stored.get("contact").is_some() && !subsetted(&stored),
        "{stored}"
    );
}
both!(summary_and_elements);

async fn post_search(app: TestApp) {
    seed(&app).await;
    let post = |path: &str, body: &str| {
        app.client
            .post(search_url(&app, path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_query(body))
    };
    let want = sorted(&["s-e", "s-b"]);
    // Same result as GET.
    assert_eq!(
        ids(&app, &format!("Patient?{SORT}&family=smith&gender=male")).await,
        want
    );
    let r = app
        .send(post(
            "Patient/_search",
            &format!("{SORT}&family=smith&gender=male"),
        ))
        .await;
    let b = searchset(&r, "POST Patient/_search");
    let mut got = match_ids(&b);
    got.sort();
    assert_eq!(got, want, "{b}");
    // Parameters in the URL and in the body are combined (AND).
    let r = app
        .send(post(
            "Patient/_search?gender=male",
            &format!("{SORT}&family=smith"),
        ))
        .await;
    let b = searchset(&r, "POST Patient/_search?gender=male");
    let mut got = match_ids(&b);
    got.sort();
    assert_eq!(got, want, "{b}");
    // Sorting and paging through POST.
    let r = app
        .send(post(
            "Patient/_search",
            &format!("{SORT}&_sort=-birthdate&_count=2"),
        ))
        .await;
    let b = searchset(&r, "POST sorted");
    assert_eq!(match_ids(&b), ["s-b", "s-c"], "{b}");
    let next = follow(&app, &link(&b, "next").expect("next link")).await;
    assert_eq!(match_ids(&next), ["s-a", "s-d"], "{next}");
}
both!(post_search);

async fn system_level_search(app: TestApp) {
    seed(&app).await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "shared-1", "name": [{"family": "Shared"}]}),
    )
    .await;
    let before = put(
        &app,
        json!({"resourceType": "Organization", "id": "shared-1", "name": "Shared"}),
    )
    .await;
    let mark = last_updated(&before);
    tick().await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "sys-p", "name": [{"family": "Later"}]}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Organization", "id": "sys-o", "name": "Later Org"}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Practitioner", "id": "sys-dr", "name": [{"family": "Smithers"}]}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "sys-obs", "status": "final",
               "code": loinc("8867-4", "Heart rate")}),
    )
    .await;

    let system = |q: String| {
        let app = &app;
        async move {
            let b = bundle(app, &format!("?{q}")).await;
            (refs(&b), b)
        }
    };
    let (got, b) = system(format!("_type=Patient,Organization&_lastUpdated=gt{mark}")).await;
    assert_eq!(got, sorted(&["Organization/sys-o", "Patient/sys-p"]), "{b}");
    let (got, b) = system(format!("_lastUpdated=gt{mark}")).await;
    assert_eq!(
        got,
        sorted(&[
            "Observation/sys-obs",
            "Organization/sys-o",
            "Patient/sys-p",
            "Practitioner/sys-dr"
        ]),
        "{b}"
    );
    let (got, b) = system("_id=shared-1".into()).await;
    assert_eq!(
        got,
        sorted(&["Organization/shared-1", "Patient/shared-1"]),
        "{b}"
    );
    let (got, b) = system("_type=Organization&_id=shared-1,sys-o".into()).await;
    assert_eq!(
        got,
        sorted(&["Organization/shared-1", "Organization/sys-o"]),
        "{b}"
    );
    // A parameter every listed type defines.
    let (got, b) = system("_type=Patient,Practitioner&family=smi".into()).await;
    assert_eq!(
        got,
        sorted(&[
            "Patient/s-a",
            "Patient/s-b",
            "Patient/s-e",
            "Practitioner/sys-dr"
        ]),
        "{b}"
    );
}
both!(system_level_search);

/// Asserts a lenient search answered 200 with exactly `expected` and an outcome entry that
/// names `param`, and that the same search under `Prefer: handling=strict` is refused (400).
async fn check_lenient_and_strict(app: &TestApp, query: &str, expected: &[&str], param: &str) {
    let b = bundle(app, query).await;
    let mut got = match_ids(&b);
    got.sort();
    assert_eq!(got, sorted(expected), "GET {query}: matches\n{b}");
    let outcomes = outcome_text(&b);
    assert!(
        outcomes.iter().any(|o| o.contains(param)),
        "GET {query}: an outcome entry names {param}\n{b}"
    );
    let strict = get_prefer(app, query, "handling=strict").await;
    assert_eq!(strict.status, 400, "strict GET {query}: {}", strict.text);
    let issues = strict.outcome_issues();
    assert!(
        issues.iter().any(|i| i.to_string().contains(param)),
        "strict GET {query}: an issue names {param}: {}",
        strict.text
    );
}

async fn unknown_and_malformed_parameters(app: TestApp) {
    seed(&app).await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "err-o", "status": "final",
               "code": loinc("8867-4", "Heart rate"),
               "valueQuantity": ucum(72.0, "/min")}),
    )
    .await;
    let smiths = ["s-a", "s-b", "s-e"];
    // Unknown parameter: ignored, reported, and left out of the links.
    let q = format!("Patient?foo=bar&family=smith&{SORT}");
    check_lenient_and_strict(&app, &q, &smiths, "foo").await;
    let b = bundle(&app, &q).await;
    let self_link = link(&b, "self").expect("self link");
    assert!(
        query_pairs(&self_link).iter().all(|(k, _)| k != "foo"),
        "{self_link}"
    );
    assert!(
        query_pairs(&self_link).iter().any(|(k, _)| k == "family"),
        "{self_link}"
    );
    // A parameter of another resource type is unknown here.
    check_lenient_and_strict(
        &app,
        &format!("Patient?value-quantity=5&{SORT}&gender=female"),
        &["s-a", "s-c"],
        "value-quantity",
    )
    .await;
    // Malformed values.
    check_lenient_and_strict(
        &app,
        &format!("Patient?birthdate=notadate&family=smith&{SORT}"),
        &smiths,
        "birthdate",
    )
    .await;
    check_lenient_and_strict(
        &app,
        &format!("Patient?birthdate=xx1950&family=smith&{SORT}"),
        &smiths,
        "birthdate",
    )
    .await;
    check_lenient_and_strict(
        &app,
        "Observation?value-quantity=abc&code=8867-4",
        &["err-o"],
        "value-quantity",
    )
    .await;
    check_lenient_and_strict(
        &app,
        &format!("Patient?_count=x&family=smith&{SORT}"),
        &smiths,
        "_count",
    )
    .await;
    // An unknown sort key is refused under strict handling.
    let r = get_prefer(
        &app,
        &format!("Patient?{SORT}&_sort=foo"),
        "handling=strict",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "{}", r.text);
    // Known parameters pass strict handling.
    let r = get_prefer(
        &app,
        &format!("Patient?family=smith&{SORT}&_sort=birthdate"),
        "handling=strict",
    )
    .await;
    let b = searchset(&r, "strict, all known");
    assert_eq!(match_ids(&b), ["s-e", "s-a", "s-b"], "{b}");
    check(&app, &format!("Patient?family=smith&{SORT}"), &smiths).await;
}
both!(unknown_and_malformed_parameters);

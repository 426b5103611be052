//! The Backport IG's notification Bundle for R4 (STU 1.1,
//! http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/notifications.html): a `history`
//! Bundle whose first entry is the SubscriptionStatus as `Parameters`
//! (`backport-subscription-status-r4`), then one entry per event at the subscription's
//! payload content level. Pure: the caller reads the versions.

use serde_json::{Value, json};

use super::model::{Content, Status, Subscription};

const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";

/// https://hl7.org/fhir/R4B/valueset-subscription-notification-type.html
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// One event of a subscription.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub number: i64,
    /// Microseconds.
    pub timestamp: i64,
    pub res_type: &'a str,
    pub res_id: &'a str,
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'a str,
    /// The version's JSON, for full-resource content (none for a delete).
    pub resource: Option<&'a Value>,
}

/// The SubscriptionStatus of `sub` as `Parameters`. `events_since` is the subscription's
/// event count (handshakes and heartbeats do not count).
pub fn status(
    sub: &Subscription,
    base: &str,
    status: Status,
    kind: Kind,
    events_since: i64,
    events: &[Event<'_>],
    error: Option<&str>,
) -> Value {
    let content = sub.topic.as_ref().map_or(Content::IdOnly, |t| t.content);
    let mut parameter = vec![json!({
        "name": "subscription",
        "valueReference": {"reference": format!("{base}/Subscription/{}", sub.id)}
    })];
    if let Some(t) = &sub.topic
        && content != Content::Empty
    {
        parameter.push(json!({"name": "topic", "valueCanonical": t.topic.url}));
    }
    parameter.push(json!({"name": "status", "valueCode": status.as_str()}));
    parameter.push(json!({"name": "type", "valueCode": kind.as_str()}));
    // A string in the R4 profile.
    parameter.push(json!({
        "name": "events-since-subscription-start",
        "valueString": events_since.to_string()
    }));
    for e in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": crate::store::format_instant(e.timestamp)}),
        ];
        if content != Content::Empty {
            part.push(json!({
                "name": "focus",
                "valueReference": {"reference": format!("{base}/{}/{}", e.res_type, e.res_id)}
            }));
        }
        parameter.push(json!({"name": "notification-event", "part": part}));
    }
    if let Some(why) = error {
        parameter.push(json!({
            "name": "error",
            "valueCodeableConcept": {
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/subscription-error",
                    "code": "no-response"
                }],
                "text": why
            }
        }));
    }
    let id = uuid::Uuid::new_v4().to_string();
    json!({
        "resourceType": "Parameters",
        "id": id,
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameter
    })
}

/// The entry of a status `Parameters`, as the `$status` request that would return it.
fn status_entry(sub: &Subscription, base: &str, parameters: Value) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:{}", parameters["id"].as_str().unwrap_or_default()),
        "resource": parameters,
        "request": {"method": "GET", "url": format!("{base}/Subscription/{}/$status", sub.id)},
        "response": {"status": "200"}
    })
}

/// A notification (or `$events`) Bundle: the status, then the events at the subscription's
/// content level.
pub fn notification(
    sub: &Subscription,
    base: &str,
    parameters: Value,
    events: &[Event<'_>],
    now: i64,
) -> Value {
    let content = sub.topic.as_ref().map_or(Content::IdOnly, |t| t.content);
    let mut entry = vec![status_entry(sub, base, parameters)];
    if content != Content::Empty {
        for e in events {
            let (method, url, code) = match e.method {
                "POST" => ("POST", e.res_type.to_owned(), "201"),
                "DELETE" => ("DELETE", format!("{}/{}", e.res_type, e.res_id), "204"),
                m => (m, format!("{}/{}", e.res_type, e.res_id), "200"),
            };
            let mut item = json!({
                "fullUrl": format!("{base}/{}/{}", e.res_type, e.res_id),
                "request": {"method": method, "url": url},
                "response": {"status": code}
            });
            if content == Content::FullResource
                && let Some(r) = e.resource
            {
                item["resource"] = r.clone();
            }
            entry.push(item);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": crate::store::format_instant(now),
        "entry": entry
    })
}

/// The `$status` answer: a `searchset` of status `Parameters`, one per subscription.
pub fn status_searchset(items: Vec<Value>) -> Value {
    let total = items.len();
    let entry: Vec<Value> = items
        .into_iter()
        // A searchset's entries carry no request or response (Bundle invariants bdl-3, bdl-4).
        .map(|p| {
            json!({
                "fullUrl": format!("urn:uuid:{}", p["id"].as_str().unwrap_or_default()),
                "resource": p,
                "search": {"mode": "match"}
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": total,
        "entry": entry
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "https://fhir.example.org/fhir";

    fn sub(content: &str) -> Subscription {
        super::super::model::read(
            &json!({
                "resourceType": "Subscription", "id": "s1", "status": "active", "reason": "r",
                "criteria": "https://vitalbridge.dev/fhir/SubscriptionTopic/abnormal-reading",
                "channel": {"type": "rest-hook", "endpoint": "https://ehr.example/hook",
                    "payload": "application/fhir+json",
                    "_payload": {"extension": [{
                        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                        "valueCode": content}]}}
            }),
            BASE,
        )
        .unwrap()
    }

    fn param<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
        p["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["name"] == name)
            .collect()
    }

    #[test]
    fn a_handshake_counts_nothing_and_names_no_event() {
        let s = sub("id-only");
        let p = status(&s, BASE, Status::Requested, Kind::Handshake, 0, &[], None);
        assert_eq!(param(&p, "type")[0]["valueCode"], "handshake");
        assert_eq!(param(&p, "status")[0]["valueCode"], "requested");
        assert_eq!(
            param(&p, "events-since-subscription-start")[0]["valueString"],
            "0"
        );
        assert!(param(&p, "notification-event").is_empty());
        let b = notification(&s, BASE, p, &[], 0);
        assert_eq!(b["type"], "history");
        assert_eq!(b["entry"].as_array().unwrap().len(), 1);
        assert_eq!(b["entry"][0]["resource"]["resourceType"], "Parameters");
        assert_eq!(
            b["entry"][0]["request"]["url"],
            format!("{BASE}/Subscription/s1/$status")
        );
        assert_eq!(b["entry"][0]["response"]["status"], "200");
    }

    #[test]
    fn each_content_level_carries_what_it_promises() {
        let resource = json!({"resourceType": "Observation", "id": "o1", "status": "final"});
        let event = Event {
            number: 7,
            timestamp: 1_796_000_000_000_000,
            res_type: "Observation",
            res_id: "o1",
            method: "POST",
            resource: Some(&resource),
        };
        for (content, entries, with_resource, focus) in [
            ("empty", 1, false, false),
            ("id-only", 2, false, true),
            ("full-resource", 2, true, true),
        ] {
            let s = sub(content);
            let p = status(
                &s,
                BASE,
                Status::Active,
                Kind::EventNotification,
                7,
                std::slice::from_ref(&event),
                None,
            );
            let ev = param(&p, "notification-event")[0]["part"]
                .as_array()
                .unwrap()
                .clone();
            assert_eq!(ev[0]["valueString"], "7", "{content}");
            assert_eq!(ev.iter().any(|x| x["name"] == "focus"), focus, "{content}");
            assert_eq!(param(&p, "topic").is_empty(), content == "empty");
            let b = notification(&s, BASE, p, std::slice::from_ref(&event), 0);
            let list = b["entry"].as_array().unwrap();
            assert_eq!(list.len(), entries, "{content}");
            if entries == 2 {
                assert_eq!(list[1]["fullUrl"], format!("{BASE}/Observation/o1"));
                assert_eq!(list[1]["request"]["method"], "POST");
                assert_eq!(list[1]["response"]["status"], "201");
                assert_eq!(
                    list[1].get("resource").is_some(),
                    with_resource,
                    "{content}"
                );
            }
        }
    }
}

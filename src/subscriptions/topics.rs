//! The subscription topics this server offers (Subscriptions R5 Backport IG, topic-based
//! subscriptions in R4: http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/). R4 has no
//! SubscriptionTopic resource, so a topic is a canonical URL the server knows, advertised in
//! the CapabilityStatement; what triggers it is decided here, without I/O, on the version
//! committed and the one before it.

use serde_json::Value;

/// One topic.
#[derive(Debug)]
pub struct Topic {
    pub url: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// The resource type whose changes trigger it.
    pub resource: &'static str,
    /// The search parameters of `resource` a subscriber may filter by
    /// (`backport-filter-criteria`).
    pub filters: &'static [&'static str],
    /// Whether the version before the change takes part in the decision.
    pub needs_previous: bool,
    trigger: fn(previous: Option<&Value>, current: &Value) -> bool,
}

impl Topic {
    /// Whether a change from `previous` (none: a create) to `current` (none: a delete)
    /// triggers the topic.
    pub fn triggered(&self, previous: Option<&Value>, current: Option<&Value>) -> bool {
        current.is_some_and(|c| (self.trigger)(previous, c))
    }
}

const BASE: &str = "https://vitalbridge.dev/fhir/SubscriptionTopic/";

pub const TOPICS: &[Topic] = &[
    Topic {
        url: "https://vitalbridge.dev/fhir/SubscriptionTopic/vital-sign-observation",
        title: "New or changed vital-sign Observation",
        description: "An Observation with the vital-signs category is created or updated.",
        resource: "Observation",
        filters: &["patient", "subject", "code", "device", "category", "status"],
        needs_previous: false,
        trigger: |_, cur| is_vital_sign(cur),
    },
    Topic {
        url: "https://vitalbridge.dev/fhir/SubscriptionTopic/abnormal-reading",
        title: "Abnormal reading",
        description: "An Observation is created or updated with an interpretation outside the \
                      normal range (high, low, critical or abnormal), on itself or a component.",
        resource: "Observation",
        filters: &["patient", "subject", "code", "device", "category"],
        needs_previous: false,
        trigger: |_, cur| is_abnormal(cur),
    },
    Topic {
        url: "https://vitalbridge.dev/fhir/SubscriptionTopic/device-status",
        title: "Device status change",
        description: "A Device is created, or its status changes (active, inactive, \
                      entered-in-error).",
        resource: "Device",
        filters: &["patient", "organization", "identifier", "status", "type"],
        needs_previous: true,
        trigger: |prev, cur| prev.is_none_or(|p| p["status"] != cur["status"]),
    },
    Topic {
        url: "https://vitalbridge.dev/fhir/SubscriptionTopic/invoice-issued",
        title: "Invoice issued",
        description: "An Invoice becomes issued.",
        resource: "Invoice",
        filters: &["recipient", "subject", "patient", "account"],
        needs_previous: true,
        trigger: |prev, cur| {
            cur["status"] == "issued" && prev.is_none_or(|p| p["status"] != "issued")
        },
    },
];

/// The topic with canonical `url` (a version suffix `|1.0` is ignored).
pub fn find(url: &str) -> Option<&'static Topic> {
    let url = url.split('|').next().unwrap_or(url);
    url.starts_with(BASE)
        .then(|| TOPICS.iter().find(|t| t.url == url))
        .flatten()
}

fn codings(concept: &Value) -> impl Iterator<Item = &Value> {
    concept["coding"].as_array().into_iter().flatten()
}

fn is_vital_sign(o: &Value) -> bool {
    o["category"].as_array().into_iter().flatten().any(|c| {
        codings(c).any(|k| {
            k["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
                && k["code"] == "vital-signs"
        })
    })
}

/// v3 ObservationInterpretation codes outside the normal range
/// (https://terminology.hl7.org/CodeSystem-v3-ObservationInterpretation.html).
const ABNORMAL: &[&str] = &["A", "AA", "H", "HH", "HU", "L", "LL", "LU", ">", "<"];

fn is_abnormal(o: &Value) -> bool {
    let abnormal = |interpretation: &Value| {
        interpretation.as_array().into_iter().flatten().any(|c| {
            codings(c).any(|k| {
                k["system"] == "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
                    && k["code"]
                        .as_str()
                        .is_some_and(|code| ABNORMAL.contains(&code))
            })
        })
    };
    abnormal(&o["interpretation"])
        || o["component"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| abnormal(&c["interpretation"]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topic(name: &str) -> &'static Topic {
        find(&format!("{BASE}{name}")).unwrap()
    }

    fn observation(category: &str, interpretation: Option<&str>) -> Value {
        let mut o = json!({
            "resourceType": "Observation",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": category}]}]
        });
        if let Some(code) = interpretation {
            o["component"] = json!([{"interpretation": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "code": code}]}]}]);
        }
        o
    }

    #[test]
    fn each_topic_fires_on_what_it_describes_and_nothing_else() {
        let vital = topic("vital-sign-observation");
        assert!(vital.triggered(None, Some(&observation("vital-signs", None))));
        assert!(!vital.triggered(None, Some(&observation("laboratory", None))));
        assert!(!vital.triggered(Some(&observation("vital-signs", None)), None));

        let abnormal = topic("abnormal-reading");
        assert!(abnormal.triggered(None, Some(&observation("vital-signs", Some("HH")))));
        assert!(abnormal.triggered(None, Some(&observation("vital-signs", Some("L")))));
        assert!(!abnormal.triggered(None, Some(&observation("vital-signs", Some("N")))));
        assert!(!abnormal.triggered(None, Some(&observation("vital-signs", None))));

        let device = topic("device-status");
        let active = json!({"resourceType": "Device", "status": "active"});
        let inactive = json!({"resourceType": "Device", "status": "inactive"});
        assert!(device.triggered(None, Some(&active)));
        assert!(device.triggered(Some(&active), Some(&inactive)));
        assert!(!device.triggered(Some(&active), Some(&active)));

        let invoice = topic("invoice-issued");
        let draft = json!({"resourceType": "Invoice", "status": "draft"});
        let issued = json!({"resourceType": "Invoice", "status": "issued"});
        assert!(invoice.triggered(Some(&draft), Some(&issued)));
        assert!(invoice.triggered(None, Some(&issued)));
        assert!(!invoice.triggered(Some(&issued), Some(&issued)));
        assert!(!invoice.triggered(None, Some(&draft)));
    }

    #[test]
    fn topics_are_found_by_canonical_with_or_without_a_version() {
        assert!(find("https://vitalbridge.dev/fhir/SubscriptionTopic/device-status|1").is_some());
        assert!(find("http://example.org/SubscriptionTopic/device-status").is_none());
        assert!(find("https://vitalbridge.dev/fhir/SubscriptionTopic/nope").is_none());
        for t in TOPICS {
            assert!(t.url.starts_with(BASE));
            for f in t.filters {
                assert!(
                    crate::search::registry::lookup(t.resource, f).is_some(),
                    "{} filter {f}",
                    t.url
                );
            }
        }
    }
}

//! A stored R4 Subscription as the engine uses it (https://hl7.org/fhir/R4/subscription.html),
//! read from its JSON without I/O (DESIGN.md rule 5). The same reading checks a Subscription
//! before it is written, so what the engine later meets has already been accepted.

use serde_json::Value;

use crate::auth::tenancy;
use crate::fhir::types::ResourceType;
use crate::search::SearchQuery;

/// The extension on `Subscription.channel` whose `valueString` keys the HMAC-SHA256 signature
/// of each notification's body (`X-Vitalbridge-Signature: sha256={hex}`, the scheme inbound
/// cellular webhooks use too).
pub const SECRET_EXTENSION: &str =
    "https://vitalbridge.dev/fhir/StructureDefinition/subscription-signing-secret";

/// The Subscriptions R5 Backport IG's extensions (STU 1.1,
/// http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/components.html).
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
const PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
const HEARTBEAT_PERIOD: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
const TIMEOUT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";

/// The shortest signing secret accepted: 128 bits of hex or base64.
const MIN_SECRET: usize = 16;

/// https://hl7.org/fhir/R4/valueset-subscription-status.html
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Requested,
    Active,
    Error,
    Off,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "requested" => Status::Requested,
            "active" => Status::Active,
            "error" => Status::Error,
            "off" => Status::Off,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Active => "active",
            Status::Error => "error",
            Status::Off => "off",
        }
    }
}

/// The resource format of a payload (`channel.payload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json",
            Format::Xml => "application/fhir+xml",
        }
    }
}

/// How much of the changed resource a topic-based notification carries
/// (`backport-payload-content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

impl Content {
    pub fn parse(s: &str) -> Option<Content> {
        Some(match s {
            "empty" => Content::Empty,
            "id-only" => Content::IdOnly,
            "full-resource" => Content::FullResource,
            _ => return None,
        })
    }
}

/// What makes a topic-based subscription different (Backport IG).
#[derive(Debug, Clone)]
pub struct TopicBased {
    pub topic: &'static super::topics::Topic,
    pub content: Content,
    /// Seconds without a notification after which a heartbeat goes out.
    pub heartbeat: Option<u32>,
}

/// Where and how notifications go.
#[derive(Debug, Clone, PartialEq)]
pub enum Channel {
    /// https://hl7.org/fhir/R4/subscription.html#2.46.7.1
    RestHook {
        endpoint: url::Url,
        /// `channel.header`, each split at its first colon only.
        headers: Vec<(String, String)>,
        payload: Option<Format>,
    },
    /// `mailto:` endpoint.
    Email { to: String, payload: Option<Format> },
}

/// A Subscription the engine can act on.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub version_id: i64,
    pub status: Status,
    /// The organization that owns it: notifications carry nothing it may not read. `None`:
    /// an admin's subscription, which sees everything.
    pub owner: Option<String>,
    /// When it turns off by itself (microseconds).
    pub end: Option<i64>,
    /// The resource type the criteria search (a topic's resource for topic-based ones).
    pub ty: ResourceType,
    /// The criteria (for a topic-based subscription: its filters, all of which must hold).
    pub criteria: SearchQuery,
    pub channel: Channel,
    pub secret: Option<String>,
    /// Seconds an endpoint has to answer (`backport-timeout`); the server's own by default.
    pub timeout: Option<u32>,
    /// Set for a topic-based subscription.
    pub topic: Option<TopicBased>,
}

pub use crate::fhir::types::Invalid;

fn invalid(expression: &str, message: impl Into<String>) -> Invalid {
    Invalid::new("Subscription", expression, message)
}

/// Reads a Subscription; `base` is the server's FHIR base (references in the criteria under it
/// are local). Every problem is reported, not just the first.
pub fn read(resource: &Value, base: &str) -> Result<Subscription, Vec<Invalid>> {
    let mut problems = Vec::new();
    let status = resource["status"].as_str().and_then(Status::parse);
    if status.is_none() {
        problems.push(invalid(
            "status",
            "status must be requested, active, error or off",
        ));
    }
    let raw = resource["criteria"].as_str().unwrap_or("");
    let topic_based = raw.starts_with("http://") || raw.starts_with("https://");
    let parsed = if topic_based {
        topic_criteria(raw, &resource["_criteria"], base)
    } else {
        criteria(raw, base).map(|(ty, q)| (ty, q, None))
    };
    let (ty, criteria, topic) = match parsed {
        Ok((ty, q, topic)) => (Some(ty), Some(q), topic),
        Err(e) => {
            problems.push(e);
            (None, None, None)
        }
    };
    let topic = match topic.map(|t| topic_channel(t, &resource["channel"])) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            problems.push(e);
            None
        }
        None => None,
    };
    let timeout = channel_extension(&resource["channel"], TIMEOUT)
        .and_then(|e| e["valueUnsignedInt"].as_u64())
        .map(|t| t.clamp(1, 600) as u32);
    let channel = match channel(&resource["channel"]) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.extend(e);
            None
        }
    };
    let secret = resource["channel"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == SECRET_EXTENSION)
        .map(|e| e["valueString"].as_str().unwrap_or("").to_owned());
    if secret.as_ref().is_some_and(|s| s.len() < MIN_SECRET) {
        problems.push(invalid(
            "channel.extension",
            format!("a signing secret has at least {MIN_SECRET} characters"),
        ));
    }
    let end = match resource["end"].as_str() {
        None => None,
        Some(s) => match crate::store::parse_instant_micros(s) {
            Some(t) => Some(t),
            None => {
                problems.push(invalid("end", "end must be an instant with a time zone"));
                None
            }
        },
    };
    match (status, ty, criteria, channel) {
        (Some(status), Some(ty), Some(criteria), Some(channel)) if problems.is_empty() => {
            Ok(Subscription {
                id: resource["id"].as_str().unwrap_or_default().to_owned(),
                version_id: resource["meta"]["versionId"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                status,
                owner: tenancy::owner_of(resource),
                end,
                ty,
                criteria,
                channel,
                secret,
                timeout,
                topic,
            })
        }
        _ => Err(problems),
    }
}

fn channel_extension<'a>(channel: &'a Value, url: &str) -> Option<&'a Value> {
    channel["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
}

/// A topic-based subscription's `criteria` (the topic's canonical URL) and the filters in
/// its `backport-filter-criteria` extensions: `Type?param=value`, `param=value` or
/// `Type.param=value`, each on a filter parameter the topic offers.
fn topic_criteria(
    url: &str,
    extensions: &Value,
    base: &str,
) -> Result<
    (
        ResourceType,
        SearchQuery,
        Option<&'static super::topics::Topic>,
    ),
    Invalid,
> {
    let Some(topic) = super::topics::find(url) else {
        return Err(invalid(
            "criteria",
            "this server offers no such topic; its topics are listed in the CapabilityStatement",
        ));
    };
    let ty = ResourceType::parse(topic.resource)
        .ok_or_else(|| invalid("criteria", "the topic's resource type is unknown"))?;
    let mut pairs = Vec::new();
    for e in extensions["extension"].as_array().into_iter().flatten() {
        if e["url"] != FILTER_CRITERIA {
            continue;
        }
        let raw = e["valueString"].as_str().unwrap_or("");
        let prefix_q = format!("{}?", topic.resource);
        let prefix_dot = format!("{}.", topic.resource);
        let query = raw
            .strip_prefix(&prefix_q)
            .or_else(|| raw.strip_prefix(&prefix_dot))
            .unwrap_or(raw);
        for (name, value) in crate::search::decode_query(query) {
            let param = name.split(':').next().unwrap_or("");
            if !topic.filters.contains(&param) {
                return Err(invalid(
                    "criteria.extension",
                    format!(
                        "the topic {} filters by {} only",
                        topic.url,
                        topic.filters.join(", ")
                    ),
                ));
            }
            pairs.push((name, value));
        }
    }
    let q = crate::search::parse(Some(ty), &pairs, base);
    if let Some((name, why)) = q.invalid.first() {
        return Err(invalid("criteria.extension", format!("{name}: {why}")));
    }
    Ok((ty, q, Some(topic)))
}

/// The channel settings only topic-based subscriptions have.
fn topic_channel(
    topic: &'static super::topics::Topic,
    channel: &Value,
) -> Result<TopicBased, Invalid> {
    let content = match channel["_payload"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == PAYLOAD_CONTENT)
    {
        // The IG makes it required; without it, the least that still names the resource.
        None => Content::IdOnly,
        Some(e) => e["valueCode"]
            .as_str()
            .and_then(Content::parse)
            .ok_or_else(|| {
                invalid(
                    "channel.payload.extension",
                    "payload content is empty, id-only or full-resource",
                )
            })?,
    };
    if channel["payload"].is_null() {
        return Err(invalid(
            "channel.payload",
            "a topic-based subscription names its payload's format: application/fhir+json or application/fhir+xml",
        ));
    }
    let heartbeat = channel_extension(channel, HEARTBEAT_PERIOD)
        .and_then(|e| e["valueUnsignedInt"].as_u64())
        .map(|s| s.clamp(1, 86_400) as u32);
    Ok(TopicBased {
        topic,
        content,
        heartbeat,
    })
}

/// `criteria`: `Type?query` (or a bare `Type`) that this server can search.
fn criteria(raw: &str, base: &str) -> Result<(ResourceType, SearchQuery), Invalid> {
    let (ty, query) = raw.split_once('?').unwrap_or((raw, ""));
    let Some(ty) = ResourceType::parse(ty) else {
        return Err(invalid(
            "criteria",
            "criteria must start with a resource type, as in Observation?code=85354-9",
        ));
    };
    let q = crate::search::parse(Some(ty), &crate::search::decode_query(query), base);
    if let Some(name) = q.unknown.first() {
        return Err(invalid(
            "criteria",
            format!("the criteria use the unknown search parameter {name}"),
        ));
    }
    if let Some((name, why)) = q.invalid.first() {
        return Err(invalid("criteria", format!("{name}: {why}")));
    }
    // Result parameters shape a page of results; a notification is about one resource.
    let shapes = !q.sort.is_empty()
        || !q.include.is_empty()
        || !q.revinclude.is_empty()
        || q.summary.is_some()
        || q.elements.is_some()
        || q.count.is_some()
        || q.total.is_some();
    if shapes {
        return Err(invalid(
            "criteria",
            "criteria select resources: _sort, _include, _revinclude, _summary, _elements, \
             _count and _total have no meaning there",
        ));
    }
    Ok((ty, q))
}

fn channel(c: &Value) -> Result<Channel, Vec<Invalid>> {
    let payload = match c["payload"].as_str() {
        None => None,
        Some(mime) => {
            let essence = mime.split(';').next().unwrap_or("").trim();
            match essence {
                "application/fhir+json" | "application/json" | "json" => Some(Format::Json),
                "application/fhir+xml" | "application/xml" | "xml" => Some(Format::Xml),
                _ => {
                    return Err(vec![invalid(
                        "channel.payload",
                        "payload must be application/fhir+json or application/fhir+xml",
                    )]);
                }
            }
        }
    };
    let endpoint = c["endpoint"].as_str().unwrap_or("");
    match c["type"].as_str() {
        Some("rest-hook") => {
            let mut problems = Vec::new();
            let endpoint = match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
                _ => {
                    problems.push(invalid(
                        "channel.endpoint",
                        "a rest-hook endpoint is an absolute http or https URL",
                    ));
                    None
                }
            };
            let mut headers = Vec::new();
            for (i, h) in c["header"].as_array().into_iter().flatten().enumerate() {
                match h.as_str().and_then(header) {
                    Some(pair) => headers.push(pair),
                    None => problems.push(invalid(
                        &format!("channel.header[{i}]"),
                        "a header is `Name: value` with a valid HTTP name and value, and not one the \
                         server sets itself (Host, Content-Length, Content-Type, ...)",
                    )),
                }
            }
            match endpoint {
                Some(endpoint) if problems.is_empty() => Ok(Channel::RestHook {
                    endpoint,
                    headers,
                    payload,
                }),
                _ => Err(problems),
            }
        }
        Some("email") => {
            let to = endpoint.strip_prefix("mailto:").unwrap_or("");
            let to = percent_encoding::percent_decode_str(to)
                .decode_utf8_lossy()
                .into_owned();
            if !plausible_address(&to) {
                return Err(vec![invalid(
                    "channel.endpoint",
                    "an email endpoint is a mailto: URL with one address",
                )]);
            }
            Ok(Channel::Email { to, payload })
        }
        Some(other) => Err(vec![invalid(
            "channel.type",
            format!("channel type {other} is not supported here: use rest-hook or email"),
        )]),
        None => Err(vec![invalid("channel.type", "channel.type is required")]),
    }
}

/// `Name: value`, split at the first colon only: a value may hold colons of its own (an
/// `Authorization` with a URL, a time of day).
pub fn header(raw: &str) -> Option<(String, String)> {
    let (name, value) = raw.split_once(':')?;
    let name = name.trim();
    let value = value.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let valid_value = value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    // The server frames the request itself: a channel header may not redirect or reframe it.
    let framing = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "content-type",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h));
    (valid_name && valid_value && !framing).then(|| (name.to_owned(), value.to_owned()))
}

/// `local@domain` without spaces, brackets or a second `@` (RFC 5322's addr-spec, less its
/// quoted and commented forms, which no clinic's mailbox needs).
fn plausible_address(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:\"@".contains(&b))
    };
    s.split_once('@').is_some_and(|(l, d)| ok(l) && ok(d))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    const BASE: &str = "http://localhost/fhir";

    fn subscription(channel: Value) -> Value {
        json!({
            "resourceType": "Subscription",
            "id": "s1",
            "meta": {"versionId": "3", "tag": [{"system": tenancy::OWNER_SYSTEM, "code": "clinic-a"}]},
            "status": "requested",
            "reason": "new readings",
            "criteria": "Observation?category=vital-signs",
            "end": "2027-01-01T00:00:00Z",
            "channel": channel
        })
    }

    #[test]
    fn a_rest_hook_subscription_reads_with_headers_split_at_the_first_colon() {
        let s = read(
            &subscription(json!({
                "type": "rest-hook",
                "endpoint": "https://ehr.example.org/fhir",
                "payload": "application/fhir+json",
                "header": ["Authorization: Bearer a:b:c", "X-Time: 12:30"],
                "extension": [{"url": SECRET_EXTENSION, "valueString": "0123456789abcdef"}]
            })),
            BASE,
        )
        .unwrap();
        assert_eq!(s.status, Status::Requested);
        assert_eq!(s.version_id, 3);
        assert_eq!(s.owner.as_deref(), Some("clinic-a"));
        assert_eq!(s.ty.as_str(), "Observation");
        assert!(s.end.is_some());
        assert_eq!(s.secret.as_deref(), Some("0123456789abcdef"));
        let Channel::RestHook {
            endpoint,
            headers,
            payload,
        } = s.channel
        else {
            panic!("not a rest-hook");
        };
        assert_eq!(endpoint.as_str(), "https://ehr.example.org/fhir");
        assert_eq!(payload, Some(Format::Json));
        assert_eq!(
            headers,
            [
                ("Authorization".to_owned(), "Bearer a:b:c".to_owned()),
                ("X-Time".to_owned(), "12:30".to_owned())
            ]
        );
    }

    #[test]
    fn what_cannot_be_delivered_or_matched_is_refused_with_the_element_at_fault() {
        let cases: &[(Value, &str, &str)] = &[
            (
                json!({"criteria": "Observation?no-such-param=1"}),
                "Subscription.criteria",
                "no-such-param",
            ),
            (
                json!({"criteria": "Nonsense?code=1"}),
                "Subscription.criteria",
                "resource type",
            ),
            (
                json!({"criteria": "Observation?code=1&_sort=date"}),
                "Subscription.criteria",
                "_sort",
            ),
            (
                json!({"criteria": "Observation?date=notadate"}),
                "Subscription.criteria",
                "date",
            ),
            (
                json!({"channel": {"type": "websocket"}}),
                "Subscription.channel.type",
                "websocket",
            ),
            (
                json!({"channel": {"type": "rest-hook", "endpoint": "ftp://x/y"}}),
                "Subscription.channel.endpoint",
                "http",
            ),
            (
                json!({"channel": {"type": "rest-hook", "endpoint": "http://x/",
                                   "header": ["no colon"]}}),
                "Subscription.channel.header[0]",
                "Name: value",
            ),
            (
                json!({"channel": {"type": "rest-hook", "endpoint": "http://x/",
                                   "payload": "text/plain"}}),
                "Subscription.channel.payload",
                "fhir+json",
            ),
            (
                json!({"channel": {"type": "email", "endpoint": "mailto:not an address"}}),
                "Subscription.channel.endpoint",
                "mailto",
            ),
            (
                json!({"channel": {"type": "rest-hook", "endpoint": "http://x/",
                    "extension": [{"url": SECRET_EXTENSION, "valueString": "short"}]}}),
                "Subscription.channel.extension",
                "secret",
            ),
            (
                json!({"status": "paused"}),
                "Subscription.status",
                "requested",
            ),
            (json!({"end": "tomorrow"}), "Subscription.end", "instant"),
        ];
        for (change, expression, words) in cases {
            let mut s = subscription(json!({"type": "rest-hook", "endpoint": "http://x/"}));
            for (k, v) in change.as_object().unwrap() {
                s[k] = v.clone();
            }
            let problems = read(&s, BASE).unwrap_err();
            assert_eq!(problems.len(), 1, "{change}: {problems:?}");
            assert_eq!(problems[0].expression, *expression, "{change}");
            assert!(
                problems[0].message.contains(words),
                "{change}: {}",
                problems[0].message
            );
        }
    }

    #[test]
    fn an_email_subscription_names_one_address() {
        let s = read(
            &subscription(json!({"type": "email", "endpoint": "mailto:nurse%40clinic.example"})),
            BASE,
        )
        .unwrap();
        assert_eq!(
            s.channel,
            Channel::Email {
                to: "nurse@clinic.example".into(),
                payload: None
            }
        );
    }

    #[test]
    fn header_values_keep_their_colons_and_names_must_be_tokens() {
        assert_eq!(
            header("Authorization: Basic dXNlcjpwYXNz"),
            Some(("Authorization".into(), "Basic dXNlcjpwYXNz".into()))
        );
        assert_eq!(
            header("X-Url: https://a.example:8443/x"),
            Some(("X-Url".into(), "https://a.example:8443/x".into()))
        );
        assert_eq!(header("Bad Name: v"), None);
        assert_eq!(header("Host: internal.example"), None);
        assert_eq!(header("content-length: 0"), None);
        assert_eq!(header("X-Line: a\nb"), None);
        assert_eq!(header("novalue"), None);
    }
}

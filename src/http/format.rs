//! Content negotiation (https://hl7.org/fhir/R4/http.html#mime-type): `_format` wins over
//! `Accept`; JSON is the default; `_pretty=true` indents. Request bodies are read here, with the
//! configured size limit, and parsed by their `Content-Type`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ApiError;
use crate::fhir::xml;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/fhir+json`; `plain` answers `application/json` when that is what was asked.
    Json {
        plain: bool,
    },
    Xml,
}

/// How to answer this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub pretty: bool,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            format: Format::Json { plain: false },
            pretty: false,
        }
    }
}

fn format_from_mime(mime: &str) -> Option<Format> {
    let mime = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "json" | "application/fhir+json" | "application/json+fhir" => {
            Some(Format::Json { plain: false })
        }
        "application/json" => Some(Format::Json { plain: true }),
        "*/*" | "application/*" | "" => Some(Format::Json { plain: false }),
        "xml"
        | "application/fhir+xml"
        | "application/xml+fhir"
        | "application/xml"
        | "text/xml" => Some(Format::Xml),
        _ => None,
    }
}

/// Picks the answer format from `_format`, `_pretty` and `Accept`.
pub fn negotiate(query: &[(String, String)], headers: &HeaderMap) -> Result<Negotiated, ApiError> {
    let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
    if let Some((_, f)) = query.iter().find(|(k, _)| k == "_format") {
        let format = format_from_mime(f).ok_or_else(|| {
            ApiError::NotAcceptable(format!(
                "_format '{}' is not supported; use json or xml",
                short(f)
            ))
        })?;
        return Ok(Negotiated { format, pretty });
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Negotiated {
            format: Format::Json { plain: false },
            pretty,
        });
    };
    // The supported type with the highest q wins; ties keep the client's order.
    let mut best: Option<(f32, Format)> = None;
    for part in accept.split(',') {
        let mut params = part.split(';');
        let mime = params.next().unwrap_or("").trim();
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        if let Some(f) = format_from_mime(mime)
            && best.is_none_or(|(bq, _)| q > bq)
        {
            best = Some((q, f));
        }
    }
    match best {
        Some((_, format)) => Ok(Negotiated { format, pretty }),
        None => Err(ApiError::NotAcceptable(format!(
            "none of the types in Accept ({}) is supported; use application/fhir+json or application/fhir+xml",
            short(accept)
        ))),
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Reads the request body, refusing more than `limit` bytes with 413.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes reports the limit as a boxed LengthLimitError somewhere in the source chain.
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = src {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge(limit);
            }
            src = err.source();
        }
        ApiError::bad_request("structure", "the request body could not be read")
    })
}

/// The format of a request body, from `Content-Type` (a missing one is taken as JSON).
pub fn body_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(Format::Json { plain: false }),
        Some(ct) => match format_from_mime(ct) {
            Some(f) if !ct.trim().starts_with("*/") => Ok(f),
            _ => Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type '{}' is not supported; send application/fhir+json or application/fhir+xml",
                short(ct)
            ))),
        },
    }
}

/// How deeply a request body may nest (objects and arrays, or XML elements). The deepest
/// official R4 example nests 22 levels; parsing and validation recurse per level, so a bound
/// keeps a hostile body from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// Parses a body as FHIR JSON or XML into JSON (still to be validated).
pub fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "required",
            "the request body is empty",
        ));
    }
    let format = body_format(headers)?;
    if nesting_depth(body, format) > MAX_DEPTH {
        return Err(ApiError::bad_request(
            "too-costly",
            format!("the body nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    match format {
        Format::Json { .. } => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "structure",
                format!(
                    "the body is not valid JSON: {} at line {} column {}",
                    e.classify_name(),
                    e.line(),
                    e.column()
                ),
            )
        }),
        Format::Xml => xml::from_xml(body),
    }
}

/// The deepest nesting of a JSON or XML text, found by a scan that does not recurse. Brackets
/// and tags inside strings, comments and CDATA are skipped; the scan needs no well-formed input.
fn nesting_depth(body: &[u8], format: Format) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    match format {
        Format::Json { .. } => {
            let mut in_string = false;
            while i < body.len() {
                let b = body[i];
                if in_string {
                    match b {
                        b'\\' => i += 1,
                        b'"' => in_string = false,
                        _ => {}
                    }
                } else {
                    match b {
                        b'"' => in_string = true,
                        b'{' | b'[' => {
                            depth += 1;
                            max = max.max(depth);
                        }
                        b'}' | b']' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
                i += 1;
            }
        }
        Format::Xml => {
            while let Some(off) = body[i..].iter().position(|&b| b == b'<') {
                i += off;
                let rest = &body[i..];
                let skip_to = |end: &[u8]| {
                    rest.windows(end.len())
                        .position(|w| w == end)
                        .map(|p| p + end.len())
                };
                let len = if rest.starts_with(b"<!--") {
                    skip_to(b"-->")
                } else if rest.starts_with(b"<![CDATA[") {
                    skip_to(b"]]>")
                } else if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
                    skip_to(b">")
                } else if rest.starts_with(b"</") {
                    depth = depth.saturating_sub(1);
                    skip_to(b">")
                } else {
                    let end = skip_to(b">");
                    if end.is_some_and(|e| e >= 2 && rest[e - 2] != b'/') {
                        depth += 1;
                        max = max.max(depth);
                    }
                    end
                };
                match len {
                    Some(l) => i += l,
                    None => break,
                }
            }
        }
    }
    max
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Eof => "unexpected end of input",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Io => "read error",
        }
    }
}

/// The body of a FHIR response.
#[derive(Debug)]
pub enum Payload {
    Empty,
    /// Resource JSON exactly as stored; served without re-serialising when compact JSON is asked.
    Stored(String),
    Value(Value),
    Searchset(crate::fhir::bundle::Searchset),
}

/// A FHIR response before it is rendered in the negotiated format.
#[derive(Debug)]
pub struct FhirResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub payload: Payload,
}

impl FhirResponse {
    pub fn new(status: StatusCode, payload: Payload) -> Self {
        FhirResponse {
            status,
            headers: HeaderMap::new(),
            payload,
        }
    }

    pub fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    /// Renders the payload in the negotiated format.
    pub fn render(self, n: Negotiated) -> Response {
        let content_type = match n.format {
            Format::Json { plain: false } => "application/fhir+json; charset=utf-8",
            Format::Json { plain: true } => "application/json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        };
        let body: Result<Option<Vec<u8>>, ApiError> = match (self.payload, n.format) {
            (Payload::Empty, _) => Ok(None),
            (Payload::Stored(s), Format::Json { .. }) if !n.pretty => Ok(Some(s.into_bytes())),
            (Payload::Stored(s), format) => serde_json::from_str::<Value>(&s)
                .map_err(ApiError::internal)
                .and_then(|v| encode(&v, format, n.pretty).map(Some)),
            (Payload::Value(v), format) => encode(&v, format, n.pretty).map(Some),
            (Payload::Searchset(b), Format::Json { .. }) if !n.pretty => b.to_json().map(Some),
            (Payload::Searchset(b), format) => b
                .into_value()
                .and_then(|v| encode(&v, format, n.pretty).map(Some)),
        };
        match body {
            Ok(body) => {
                let mut resp = match body {
                    Some(b) => {
                        let mut r = (self.status, b).into_response();
                        r.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                        r
                    }
                    None => self.status.into_response(),
                };
                resp.headers_mut().extend(self.headers);
                resp
            }
            Err(e) => e.into_response(),
        }
    }
}

/// Serialises a resource in `format`.
pub fn encode(v: &Value, format: Format, pretty: bool) -> Result<Vec<u8>, ApiError> {
    match format {
        Format::Json { .. } if pretty => serde_json::to_vec_pretty(v).map_err(ApiError::internal),
        Format::Json { .. } => serde_json::to_vec(v).map_err(ApiError::internal),
        Format::Xml => xml::to_xml(v, pretty).map(String::into_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Result<Negotiated, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        negotiate(&[], &h)
    }

    #[test]
    fn depth() {
        let json = Format::Json { plain: false };
        assert_eq!(nesting_depth(br#"{"a": [{"b": "[[[{{"}]}"#, json), 3);
        assert_eq!(nesting_depth(br#"{"a": "\"{"}"#, json), 1);
        assert_eq!(
            nesting_depth(b"<a><b/><c><d>x</d></c><!-- <e><f> --></a>", Format::Xml),
            3
        );
        assert_eq!(
            nesting_depth(
                b"<?xml version=\"1.0\"?><a x=\"1\"><![CDATA[<b><c>]]></a>",
                Format::Xml
            ),
            1
        );
    }

    #[test]
    fn negotiation() {
        assert_eq!(
            accept("application/fhir+xml").map(|n| n.format).ok(),
            Some(Format::Xml)
        );
        assert_eq!(
            accept("application/json").map(|n| n.format).ok(),
            Some(Format::Json { plain: true })
        );
        assert_eq!(
            accept("text/html, application/fhir+json;q=0.5, application/fhir+xml;q=0.9")
                .map(|n| n.format)
                .ok(),
            Some(Format::Xml)
        );
        assert!(matches!(
            accept("text/html"),
            Err(ApiError::NotAcceptable(_))
        ));
        assert_eq!(
            accept("*/*").map(|n| n.format).ok(),
            Some(Format::Json { plain: false })
        );
        let q = vec![
            ("_format".to_string(), "xml".to_string()),
            ("_pretty".into(), "true".into()),
        ];
        let n = negotiate(&q, &HeaderMap::new()).expect("negotiated");
        assert_eq!(
            n,
            Negotiated {
                format: Format::Xml,
                pretty: true
            }
        );
        let q = vec![("_format".to_string(), "text/turtle".to_string())];
        assert!(matches!(
            negotiate(&q, &HeaderMap::new()),
            Err(ApiError::NotAcceptable(_))
        ));
    }
}

//! FHIR XML through fhirbolt (https://hl7.org/fhir/R4/xml.html).
//!
//! fhirbolt 0.4's XML writer trims text next to inline XHTML elements inside `Narrative.div`
//! (`<p>Hello <b>you</b> there</p>` loses the spaces around `<b>`), which changes what a
//! clinician reads. So every `div` is swapped for a placeholder before fhirbolt writes the XML,
//! and the original XHTML (which the JSON form carries verbatim as a string) is put back into the
//! output unchanged afterwards.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

use crate::http::error::{ApiError, Issue};

const PLACEHOLDER_PREFIX: &str = "vitalbridge-narrative-";

/// Parses FHIR XML (strictly) into FHIR JSON.
///
/// fhirbolt's reader trims whitespace inside narratives as its writer does, so the raw XHTML of
/// every narrative `div` is cut out of the text first and put back into the JSON afterwards.
pub fn from_xml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("structure", "the XML body is not UTF-8"))?;
    let nonce = format!("{PLACEHOLDER_PREFIX}{}-", uuid::Uuid::new_v4().simple());
    let (text, divs) = cut_xhtml_divs(text, &nonce);
    let config = DeserializationConfig {
        mode: DeserializationMode::Strict,
    };
    let resource: Resource = fhirbolt::xml::from_str(&text, Some(config)).map_err(|e| {
        ApiError::BadRequest(vec![Issue::error(
            "structure",
            format!("the body is not valid FHIR XML: {e}"),
        )])
    })?;
    let mut v = fhirbolt::json::to_json_value(resource, None).map_err(ApiError::internal)?;
    if !divs.is_empty() {
        restore_divs(&mut v, &nonce, &divs);
    }
    Ok(v)
}

const XHTML_DIV: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\"";

/// Replaces each narrative `<div xmlns="http://www.w3.org/1999/xhtml">…</div>` (with the divs
/// nested in it) by a placeholder, returning the new text and the originals in order.
fn cut_xhtml_divs(text: &str, nonce: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut divs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(XHTML_DIV) {
        let Some(len) = element_len(&rest[start..]) else {
            break;
        };
        out.push_str(&rest[..start]);
        divs.push(rest[start..start + len].to_owned());
        out.push_str(&format!("{XHTML_DIV}>{nonce}{}-end</div>", divs.len() - 1));
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    (out, divs)
}

/// Length of the `div` element at the start of `s`, counting nested divs.
fn element_len(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < s.len() {
        let r = &s[i..];
        if r.starts_with("<div") && r[4..].starts_with([' ', '>', '/', '\n', '\t', '\r']) {
            let close = r.find('>')?;
            if r[..close].ends_with('/') {
                if depth == 0 {
                    return Some(i + close + 1);
                }
            } else {
                depth += 1;
            }
            i += close + 1;
        } else if r.starts_with("</div>") {
            depth = depth.checked_sub(1)?;
            i += "</div>".len();
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += r.chars().next().map_or(1, char::len_utf8);
        }
    }
    None
}

/// Puts the original XHTML back where placeholders ended up in the JSON.
fn restore_divs(v: &mut Value, nonce: &str, divs: &[String]) {
    match v {
        Value::Object(map) => map.values_mut().for_each(|c| restore_divs(c, nonce, divs)),
        Value::Array(items) => items.iter_mut().for_each(|c| restore_divs(c, nonce, divs)),
        Value::String(s) => {
            if let Some(pos) = s.find(nonce) {
                let n: Option<usize> = s[pos + nonce.len()..]
                    .split('-')
                    .next()
                    .and_then(|n| n.parse().ok());
                if let Some(original) = n.and_then(|n| divs.get(n)) {
                    *s = original.clone();
                }
            }
        }
        _ => {}
    }
}

/// Writes FHIR JSON as FHIR XML, keeping narrative XHTML exactly.
pub fn to_xml(v: &Value, pretty: bool) -> Result<String, ApiError> {
    let mut v = v.clone();
    let mut divs = Vec::new();
    // A fresh nonce per document: no text of the resource itself can look like a placeholder.
    let nonce = format!("{PLACEHOLDER_PREFIX}{}-", uuid::Uuid::new_v4().simple());
    take_divs(&mut v, &nonce, &mut divs);
    let config = DeserializationConfig {
        mode: DeserializationMode::Compatibility,
    };
    let resource: Resource =
        fhirbolt::json::from_json_value(v, Some(config)).map_err(ApiError::internal)?;
    let mut xml = fhirbolt::xml::to_string(&resource, None).map_err(ApiError::internal)?;
    // Put the original XHTML back. Placeholders are unique ASCII tokens, so each is found once.
    for (i, div) in divs.iter().enumerate().rev() {
        let token = format!("{nonce}{i}-end");
        if let Some(pos) = xml.find(&token) {
            let start = xml[..pos].rfind("<div").unwrap_or(pos);
            let end = xml[pos..]
                .find("</div>")
                .map(|e| pos + e + "</div>".len())
                .unwrap_or(pos);
            xml.replace_range(start..end, div);
        }
    }
    if pretty {
        // fhirbolt writes compact XML; a newline after the declaration keeps it readable without
        // touching any whitespace that belongs to the content.
        if let Some(p) = xml.find("?>") {
            xml.insert(p + 2, '\n');
        }
    }
    Ok(xml)
}

/// Replaces every `text.div` (in the resource and every resource inside it) by a placeholder div
/// and collects the originals in document order.
fn take_divs(v: &mut Value, nonce: &str, divs: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(text)) = map.get_mut("text")
                && let Some(Value::String(div)) = text.get_mut("div")
            {
                let placeholder = format!(
                    "<div xmlns=\"http://www.w3.org/1999/xhtml\">{nonce}{}-end</div>",
                    divs.len()
                );
                divs.push(std::mem::replace(div, placeholder));
            }
            for (_, child) in map.iter_mut() {
                take_divs(child, nonce, divs);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| take_divs(i, nonce, divs)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn narrative_whitespace_survives_xml() {
        let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Blood pressure <b>high</b> today, <i>recheck</i> tomorrow</p>\n  <p>ok</p></div>";
        let v = json!({
            "resourceType": "Observation",
            "text": {"status": "generated", "div": div},
            "contained": [{"resourceType": "Patient", "text": {"status": "generated", "div": div}}],
            "status": "final",
            "code": {"text": "bp"}
        });
        let xml = to_xml(&v, false).expect("xml");
        assert_eq!(xml.matches(div).count(), 2, "{xml}");
        let back = from_xml(xml.as_bytes()).expect("parse back");
        assert_eq!(back["text"]["div"], json!(div));
        assert_eq!(back["contained"][0]["text"]["div"], json!(div));
    }
}

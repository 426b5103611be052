//! JSON Schemas of FHIR R4 resources for the OpenAPI document (`crate::http::openapi`), made
//! from the same generated element tables the validator checks bodies with, so that the
//! document describes exactly what the server accepts: every element of a type (inherited ones
//! and each `valueXxx` of a choice), arrays where the cardinality is `*`, the `_name` companion
//! of each primitive (https://hl7.org/fhir/R4/json.html#primitive), and the codes of small
//! required bindings.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::tables::{Elem, JsonKind, Kind, Prim, TABLES, Tables, TypeDef};

/// Required bindings with at most this many codes become an `enum`.
const MAX_ENUM: usize = 64;

/// Component name of the schema any resource matches (an embedded or contained one, a
/// Bundle entry's): an object with a `resourceType`.
pub const ANY_RESOURCE: &str = "Resource";

/// The schemas of the resource types `roots` and of every data type and backbone element they
/// reach, keyed by component name (the type name, `Observation.component` for a backbone
/// element), plus [`ANY_RESOURCE`]. Unknown names are skipped.
pub fn json_schemas(roots: &[&str]) -> BTreeMap<String, Value> {
    let t: &Tables = &TABLES;
    let mut out = BTreeMap::new();
    let mut todo: Vec<&TypeDef> = roots.iter().filter_map(|r| t.resource(r)).collect();
    let mut seen: BTreeSet<&str> = todo.iter().map(|d| d.name).collect();
    while let Some(def) = todo.pop() {
        let mut props = Map::new();
        let mut names: Vec<&str> = def.elems.keys().map(|k| &**k).collect();
        names.sort_unstable();
        if def.is_resource {
            props.insert(
                "resourceType".into(),
                json!({"type": "string", "enum": [def.name]}),
            );
        }
        for name in names {
            let elem = def.elems[name];
            props.insert(name.into(), many(elem, element(t, elem)));
            match elem.kind {
                // Extensions and ids of primitive values (json.html#primitive).
                Kind::Prim(_) => {
                    props.insert(format!("_{name}"), many(elem, reference("Element")));
                }
                Kind::Complex(id) => {
                    let d = &t.types[usize::from(id)];
                    if seen.insert(d.name) {
                        todo.push(d);
                    }
                }
                Kind::Resource => {}
            }
        }
        if seen.insert("Element")
            && let Some(d) = t.get("Element")
        {
            todo.push(d);
        }
        let mut schema = json!({
            "type": "object",
            "properties": props,
            // Unknown elements are refused (400), as fhirbolt's strict parsing does.
            "additionalProperties": false,
        });
        if def.is_resource {
            schema["required"] = json!(["resourceType"]);
            schema["description"] = format!(
                "FHIR R4 {} (https://hl7.org/fhir/R4/{}.html)",
                def.name,
                def.name.to_ascii_lowercase()
            )
            .into();
        }
        out.insert(def.name.to_string(), schema);
    }
    out.insert(
        ANY_RESOURCE.into(),
        json!({
            "type": "object",
            "description": "Any FHIR R4 resource, named by its resourceType",
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
        }),
    );
    out
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn many(elem: Elem, one: Value) -> Value {
    if elem.many {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}

/// The schema of one value of `elem`.
fn element(t: &Tables, elem: Elem) -> Value {
    match elem.kind {
        Kind::Prim(p) => {
            let mut s = match p.json_kind() {
                JsonKind::Bool => json!({"type": "boolean"}),
                JsonKind::Number if matches!(p, Prim::Decimal) => json!({"type": "number"}),
                JsonKind::Number => json!({"type": "integer"}),
                JsonKind::String => json!({"type": "string"}),
            };
            if matches!(p, Prim::PositiveInt) {
                s["minimum"] = 1.into();
            } else if matches!(p, Prim::UnsignedInt) {
                s["minimum"] = 0.into();
            }
            s["description"] = format!("FHIR {}", p.name()).into();
            if let Some(vs) = elem.binding.map(|b| &t.value_sets[usize::from(b)])
                && matches!(p, Prim::Code)
                && vs.code_count() <= MAX_ENUM
            {
                s["enum"] = vs.sorted_codes().into();
            }
            s
        }
        Kind::Complex(id) => reference(t.types[usize::from(id)].name),
        Kind::Resource => reference(ANY_RESOURCE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_follow_the_definitions() {
        let s = json_schemas(&["Observation"]);
        let obs = &s["Observation"]["properties"];
        assert_eq!(obs["resourceType"]["enum"], json!(["Observation"]));
        // choice elements, one property per type; arrays for `*`; primitive companions
        assert_eq!(
            obs["valueQuantity"]["$ref"],
            "#/components/schemas/Quantity"
        );
        assert_eq!(obs["effectiveDateTime"]["type"], "string");
        assert_eq!(obs["category"]["type"], "array");
        assert_eq!(obs["_issued"]["$ref"], "#/components/schemas/Element");
        // a required binding's codes
        let status: Vec<&str> = obs["status"]["enum"]
            .as_array()
            .expect("status is bound")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(status.contains(&"final") && status.contains(&"amended"));
        // backbone elements and reached data types are components; nothing dangles
        assert!(s.contains_key("Observation.component"));
        assert!(s.contains_key("Extension") && s.contains_key("Element"));
        let text = serde_json::to_string(&s).expect("serialises");
        for r in text.split("#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap_or_default();
            assert!(s.contains_key(name), "{name} is referenced but missing");
        }
        assert!(!s.contains_key("Patient"), "only reached types");
    }
}

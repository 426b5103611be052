//! The generated R4 tables (`r4_elements.txt`, `r4_valuesets.txt`, written by
//! `tools/gen_fhir_tables.py`), parsed once into hash maps.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

const ELEMENTS: &str = include_str!("r4_elements.txt");
const VALUE_SETS: &str = include_str!("r4_valuesets.txt");

pub(super) static TABLES: LazyLock<Tables> = LazyLock::new(|| Tables::parse(ELEMENTS, VALUE_SETS));

/// The FHIR R4 primitive types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prim {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

/// How a primitive is represented in FHIR JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonKind {
    Bool,
    Number,
    String,
}

impl Prim {
    pub(super) const ALL: [Prim; 20] = [
        Prim::Base64Binary,
        Prim::Boolean,
        Prim::Canonical,
        Prim::Code,
        Prim::Date,
        Prim::DateTime,
        Prim::Decimal,
        Prim::Id,
        Prim::Instant,
        Prim::Integer,
        Prim::Markdown,
        Prim::Oid,
        Prim::PositiveInt,
        Prim::String,
        Prim::Time,
        Prim::UnsignedInt,
        Prim::Uri,
        Prim::Url,
        Prim::Uuid,
        Prim::Xhtml,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Prim::Base64Binary => "base64Binary",
            Prim::Boolean => "boolean",
            Prim::Canonical => "canonical",
            Prim::Code => "code",
            Prim::Date => "date",
            Prim::DateTime => "dateTime",
            Prim::Decimal => "decimal",
            Prim::Id => "id",
            Prim::Instant => "instant",
            Prim::Integer => "integer",
            Prim::Markdown => "markdown",
            Prim::Oid => "oid",
            Prim::PositiveInt => "positiveInt",
            Prim::String => "string",
            Prim::Time => "time",
            Prim::UnsignedInt => "unsignedInt",
            Prim::Uri => "uri",
            Prim::Url => "url",
            Prim::Uuid => "uuid",
            Prim::Xhtml => "xhtml",
        }
    }

    fn from_name(name: &str) -> Option<Prim> {
        Prim::ALL.into_iter().find(|p| p.name() == name)
    }

    pub(super) fn json_kind(self) -> JsonKind {
        match self {
            Prim::Boolean => JsonKind::Bool,
            Prim::Decimal | Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => {
                JsonKind::Number
            }
            _ => JsonKind::String,
        }
    }
}

pub(super) type TypeId = u16;

/// What an element holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Prim(Prim),
    /// A data type, backbone element or (via contentReference) another element's type.
    Complex(TypeId),
    /// A whole resource, checked by its own `resourceType`.
    Resource,
}

/// One element (for choice elements: one concrete `valueXxx` alternative).
#[derive(Debug, Clone, Copy)]
pub(super) struct Elem {
    pub(super) kind: Kind,
    /// Max cardinality `*`: the JSON value is an array.
    pub(super) many: bool,
    /// Required binding to an enumerable value set (only on code/Coding/CodeableConcept).
    pub(super) binding: Option<u16>,
}

pub(super) struct TypeDef {
    pub(super) name: &'static str,
    pub(super) is_resource: bool,
    /// Own and inherited elements by JSON name (choice elements expanded).
    pub(super) elems: HashMap<Box<str>, Elem>,
}

pub(super) struct ValueSet {
    pub(super) url: &'static str,
    /// (code system, codes)
    pub(super) systems: Vec<(&'static str, HashSet<&'static str>)>,
}

impl ValueSet {
    pub(super) fn contains_code(&self, code: &str) -> bool {
        self.systems.iter().any(|(_, codes)| codes.contains(code))
    }

    pub(super) fn system(&self, system: &str) -> Option<&HashSet<&'static str>> {
        self.systems
            .iter()
            .find(|(s, _)| *s == system)
            .map(|(_, codes)| codes)
    }

    /// Every code, sorted, without repeats.
    pub(super) fn sorted_codes(&self) -> Vec<&'static str> {
        let mut codes: Vec<&str> = self
            .systems
            .iter()
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    pub(super) fn code_count(&self) -> usize {
        self.systems.iter().map(|(_, c)| c.len()).sum()
    }
}

pub(super) struct Tables {
    pub(super) types: Vec<TypeDef>,
    by_name: HashMap<&'static str, TypeId>,
    pub(super) value_sets: Vec<ValueSet>,
    pub(super) element: TypeId,
    pub(super) coding: TypeId,
    pub(super) codeable_concept: TypeId,
}

struct RawElem<'a> {
    name: &'a str,
    types: Vec<&'a str>,
    many: bool,
    binding: Option<u16>,
}

struct RawBlock<'a> {
    owner: &'a str,
    base: Option<&'a str>,
    is_resource: bool,
    elems: Vec<RawElem<'a>>,
}

impl Tables {
    pub(super) fn get(&self, name: &str) -> Option<&TypeDef> {
        self.by_name
            .get(name)
            .map(|&id| &self.types[usize::from(id)])
    }

    pub(super) fn resource(&self, name: &str) -> Option<&TypeDef> {
        self.get(name).filter(|t| t.is_resource)
    }

    /// Parses the embedded generated tables. Panics only if they are malformed,
    /// which the unit tests rule out for the tables compiled into the binary.
    fn parse(elements: &'static str, value_sets: &'static str) -> Tables {
        // value sets
        let mut vs_index: HashMap<&str, u16> = HashMap::new();
        let mut vsets: Vec<ValueSet> = Vec::new();
        for line in value_sets.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(head) = line.strip_prefix('=') {
                let (key, url) = head.split_once('\t').expect("value set header has a url");
                let id = u16::try_from(vsets.len()).expect("fewer than 65536 value sets");
                vs_index.insert(key, id);
                vsets.push(ValueSet {
                    url,
                    systems: Vec::new(),
                });
            } else {
                let mut parts = line.split('\t');
                let system = parts.next().expect("split yields at least one part");
                let vs = vsets
                    .last_mut()
                    .expect("code line follows a value set header");
                vs.systems.push((system, parts.collect()));
            }
        }

        // element blocks
        let mut blocks: Vec<RawBlock<'static>> = Vec::new();
        for line in elements.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split('\t');
            let first = parts.next().expect("split yields at least one part");
            if let Some(owner) = first.strip_prefix('@') {
                let base = parts.next().expect("block header has a base");
                let kind = parts.next().expect("block header has a kind");
                blocks.push(RawBlock {
                    owner,
                    base: (base != "-").then_some(base),
                    is_resource: kind == "r",
                    elems: Vec::new(),
                });
            } else {
                let types = parts
                    .next()
                    .expect("element has types")
                    .split(',')
                    .collect();
                let many = parts.next().expect("element has a max") == "*";
                let binding = parts
                    .next()
                    .map(|key| *vs_index.get(key).expect("bound value set is in the table"));
                let block = blocks.last_mut().expect("element follows a block header");
                block.elems.push(RawElem {
                    name: first,
                    types,
                    many,
                    binding,
                });
            }
        }
        let by_name: HashMap<&'static str, TypeId> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    b.owner,
                    TypeId::try_from(i).expect("fewer than 65536 types"),
                )
            })
            .collect();
        let lookup = |name: &str| -> TypeId {
            *by_name
                .get(name)
                .unwrap_or_else(|| panic!("type {name} is defined in the table"))
        };
        let coding = lookup("Coding");
        let codeable_concept = lookup("CodeableConcept");

        // own elements, choice elements expanded
        let mut own: Vec<HashMap<Box<str>, Elem>> = Vec::with_capacity(blocks.len());
        for block in &blocks {
            let mut map = HashMap::new();
            for e in &block.elems {
                let choice = e.name.strip_suffix("[x]");
                assert!(choice.is_some() || e.types.len() == 1, "{}", e.name);
                for &t in &e.types {
                    let kind = if let Some(p) = Prim::from_name(t) {
                        Kind::Prim(p)
                    } else if t == "Resource" {
                        Kind::Resource
                    } else if t == "@" {
                        Kind::Complex(lookup(&format!("{}.{}", block.owner, e.name)))
                    } else if let Some(path) = t.strip_prefix('#') {
                        Kind::Complex(lookup(path))
                    } else {
                        Kind::Complex(lookup(t))
                    };
                    let coded = matches!(kind, Kind::Prim(Prim::Code))
                        || kind == Kind::Complex(coding)
                        || kind == Kind::Complex(codeable_concept);
                    let elem = Elem {
                        kind,
                        many: e.many,
                        binding: e.binding.filter(|_| coded),
                    };
                    let key: Box<str> = match choice {
                        Some(base) => {
                            let mut k = String::with_capacity(base.len() + t.len());
                            k.push_str(base);
                            let mut chars = t.chars();
                            if let Some(c) = chars.next() {
                                k.push(c.to_ascii_uppercase());
                            }
                            k.push_str(chars.as_str());
                            k.into()
                        }
                        None => e.name.into(),
                    };
                    map.insert(key, elem);
                }
            }
            own.push(map);
        }

        // inheritance: base elements first, own elements override
        let mut types = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let mut chain = vec![i];
            let mut base = block.base;
            while let Some(b) = base {
                let id = usize::from(lookup(b));
                assert!(chain.len() < 16, "inheritance cycle at {}", block.owner);
                chain.push(id);
                base = blocks[id].base;
            }
            let mut elems = HashMap::new();
            for &id in chain.iter().rev() {
                elems.extend(own[id].iter().map(|(k, v)| (k.clone(), *v)));
            }
            elems.shrink_to_fit();
            types.push(TypeDef {
                name: block.owner,
                is_resource: block.is_resource,
                elems,
            });
        }

        Tables {
            types,
            element: lookup("Element"),
            coding,
            codeable_concept,
            by_name,
            value_sets: vsets,
        }
    }
}

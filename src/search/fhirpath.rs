//! The FHIRPath subset used by the R4 search-parameter expressions
//! (http://hl7.org/fhirpath/, N1 as referenced by FHIR R4).
//!
//! Search-index values are extracted on every write by evaluating each parameter's
//! `SearchParameter.expression` against the resource JSON, so an expression is parsed once into
//! an [`Expr`] and evaluation only walks borrowed JSON (no regex, no formatting, no cloning).
//!
//! # What the R4 definitions use
//!
//! `search-parameters.json` (FHIR 4.0.1) holds 1378 SearchParameters; 1375 carry an expression
//! (1347 distinct; `DomainResource-text`, `Resource-content` and `Resource-query` have none).
//! Forms found, with the number of expressions using each:
//!
//! - plain paths only, e.g. `Observation.code`, `Patient.name.family` (1226); every step flattens
//!   arrays (http://hl7.org/fhirpath/#path-selection);
//! - choice elements reached by their base name, e.g. `Observation.effective` matching
//!   `effectiveDateTime`/`effectivePeriod`/... (http://hl7.org/fhir/R4/formats.html#choice);
//! - `|` union (83), including inside parentheses (http://hl7.org/fhirpath/#union-collections);
//! - parenthesised terms (63), once followed by a path: `(Observation.value.ofType(CodeableConcept)).text`;
//! - `.ofType(T)` (69 expressions, 145 calls) with T in Age, CodeableConcept, Identifier, Period,
//!   Quantity, Range, Reference, SampledData, boolean, canonical, date, dateTime, string, uri
//!   (http://hl7.org/fhirpath/#oftypetype-type-specifier-collection);
//! - `.where(resolve() is T)` (28) with T in Location, Patient, Practitioner, RelatedPerson
//!   (http://hl7.org/fhir/R4/fhirpath.html#functions for `resolve()`);
//! - `.where(child = 'literal')` (49 expressions, 57 calls), 45 of them followed by a further
//!   path such as `.where(type='composed-of').resource`;
//! - `Patient.deceased.exists() and Patient.deceased != false` (1): `exists()`, `and`, `!=` and
//!   the boolean literal `false`;
//! - the indexer `Bundle.entry[0].resource` (2);
//! - a bare type as a whole term: `Observation`, `Observation | Observation.component` (6,
//!   composite parameters);
//! - an unqualified path on the context resource: `name | alias` (1, InsurancePlan-name).
//!
//! Also supported because they are the documented spellings of the same ideas: the `as`/`is`
//! operators and `as()`/`is()` functions, `extension('url')`, `first()`, `last()`, `empty()`,
//! `not()`, `exists(criteria)`, `or`, `=`, `$this`, `%resource`/`%context`, integer and decimal
//! literals, backtick-delimited identifiers and string escapes. Anything else is a parse error
//! with its byte offset, so an unsupported definition is noticed when the registry is built
//! rather than silently indexing nothing.
//!
//! # Deliberate simplifications
//!
//! - There is no schema: a choice element is recognised by its JSON key being the element name
//!   followed by a known data type name (`valueQuantity`). A node reached through its exact key
//!   has no known type, and `ofType`/`as`/`is` keep such a node: the definitions only apply them
//!   to elements that have that type.
//! - `resolve()` does not fetch anything: it yields the Reference itself, typed by the target
//!   type named in `reference` (or `type`), or the contained resource for `#id`. An unresolvable
//!   reference (`urn:uuid:...`) yields nothing, so `is` is false for it.
//! - Evaluation errors of the spec (e.g. `and` on a multi-item collection) yield an empty
//!   collection; primitive extensions (`_birthDate`) are not visited.
//! - A string or number literal can only be compared; on its own it yields nothing, because a
//!   [`Node`] borrows from the resource and a literal lives in the [`Expr`].

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// One item of a result collection: a borrowed JSON element and, when the path told it, its type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node<'a> {
    pub value: &'a Value,
    /// The FHIR type when the step told it: the choice suffix (`"Quantity"`, `"DateTime"`,
    /// `"Period"`), the resource type for the context resource and `resolve()` targets,
    /// `"Boolean"` for computed booleans; otherwise `None`.
    pub type_hint: Option<&'a str>,
}

/// A syntax error or unsupported construct, at a byte offset in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl ParseError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

/// A parsed expression; cheap to evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    ast: Ast,
}

/// Parses a FHIRPath expression of the supported subset.
pub fn parse(expr: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(expr)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        end: expr.len(),
    };
    let ast = parser.expression()?;
    if parser.pos < parser.tokens.len() {
        return Err(parser.error("unexpected token (or unsupported operator)"));
    }
    Ok(Expr { ast })
}

impl Expr {
    /// Evaluates against a resource (JSON). The first path step is the resource type name
    /// (`Observation.code`): a term whose type does not match `resource["resourceType"]` yields
    /// nothing.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Node<'a>> {
        let root = Node {
            value: resource,
            type_hint: resource.get("resourceType").and_then(Value::as_str),
        };
        let cx = Ctx { root };
        let mut out = Vec::new();
        self.ast.eval(std::slice::from_ref(&root), &cx, &mut out);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Syntax tree and evaluation

#[derive(Debug, Clone, PartialEq)]
enum Ast {
    /// The focus: `$this`, or the implicit input of a path start.
    This,
    /// `%resource` / `%context`: the resource being indexed.
    Resource,
    Literal(Value),
    /// An upper-case identifier starting a path: a type name that must match the focus
    /// ("resolved as a type name first", http://hl7.org/fhirpath/#path-selection).
    TypeName(Box<str>),
    Child {
        base: Box<Ast>,
        name: Box<str>,
    },
    Index {
        base: Box<Ast>,
        index: usize,
    },
    Where {
        base: Box<Ast>,
        criteria: Box<Ast>,
    },
    Exists {
        base: Box<Ast>,
        criteria: Option<Box<Ast>>,
    },
    Empty(Box<Ast>),
    Not(Box<Ast>),
    First(Box<Ast>),
    Last(Box<Ast>),
    /// `ofType(T)`, `as(T)` and `x as T`: keep the items of type T.
    OfType {
        base: Box<Ast>,
        ty: Box<str>,
    },
    /// `is(T)` and `x is T`.
    Is {
        base: Box<Ast>,
        ty: Box<str>,
    },
    Resolve(Box<Ast>),
    Extension {
        base: Box<Ast>,
        url: Box<str>,
    },
    Union(Vec<Ast>),
    And(Box<Ast>, Box<Ast>),
    Or(Box<Ast>, Box<Ast>),
    Equals {
        left: Box<Ast>,
        right: Box<Ast>,
        negate: bool,
    },
}

struct Ctx<'a> {
    root: Node<'a>,
}

// Computed booleans need a `&'a Value`; statics outlive every resource.
static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

fn bool_node<'a>(b: bool) -> Node<'a> {
    Node {
        value: if b { &TRUE } else { &FALSE },
        type_hint: Some("Boolean"),
    }
}

impl Ast {
    fn eval<'a>(&self, focus: &[Node<'a>], cx: &Ctx<'a>, out: &mut Vec<Node<'a>>) {
        match self {
            Ast::This => out.extend_from_slice(focus),
            Ast::Resource => out.push(cx.root),
            Ast::Literal(Value::Bool(b)) => out.push(bool_node(*b)),
            Ast::Literal(_) => {}
            Ast::TypeName(name) => out.extend(
                focus
                    .iter()
                    .filter(|n| n.type_hint.is_some_and(|h| type_matches(h, name))),
            ),
            Ast::Child { base, name } => {
                for n in base.input(focus, cx).iter() {
                    push_children(n.value, name, out);
                }
            }
            Ast::Index { base, index } => {
                if let Some(n) = base.input(focus, cx).get(*index) {
                    out.push(*n);
                }
            }
            Ast::Where { base, criteria } => {
                let items = base.input(focus, cx);
                let mut scratch = Vec::new();
                for n in items.iter() {
                    if criteria.test(n, cx, &mut scratch) == Some(true) {
                        out.push(*n);
                    }
                }
            }
            Ast::Exists { base, criteria } => {
                let items = base.input(focus, cx);
                let found = match criteria {
                    None => !items.is_empty(),
                    Some(c) => {
                        let mut scratch = Vec::new();
                        items
                            .iter()
                            .any(|n| c.test(n, cx, &mut scratch) == Some(true))
                    }
                };
                out.push(bool_node(found));
            }
            Ast::Empty(base) => out.push(bool_node(base.input(focus, cx).is_empty())),
            Ast::Not(base) => {
                if let Some(b) = singleton_bool(&base.input(focus, cx)) {
                    out.push(bool_node(!b));
                }
            }
            Ast::First(base) => out.extend(base.input(focus, cx).first().copied()),
            Ast::Last(base) => out.extend(base.input(focus, cx).last().copied()),
            Ast::OfType { base, ty } => out.extend(
                base.input(focus, cx)
                    .iter()
                    .filter(|n| node_is(n, ty))
                    .copied(),
            ),
            Ast::Is { base, ty } => {
                // `is` takes a singleton; empty in, empty out (http://hl7.org/fhirpath/#is-type-specifier).
                if let [n] = &*base.input(focus, cx) {
                    out.push(bool_node(node_is(n, ty)));
                }
            }
            Ast::Resolve(base) => {
                for n in base.input(focus, cx).iter() {
                    out.extend(resolve(n, cx));
                }
            }
            Ast::Extension { base, url } => {
                for n in base.input(focus, cx).iter() {
                    let Some(Value::Array(exts)) = n.value.get("extension") else {
                        continue;
                    };
                    out.extend(
                        exts.iter()
                            .filter(|e| e.get("url").and_then(Value::as_str) == Some(&**url))
                            .map(|value| Node {
                                value,
                                type_hint: None,
                            }),
                    );
                }
            }
            Ast::Union(terms) => {
                let start = out.len();
                for term in terms {
                    let before = out.len();
                    term.eval(focus, cx, out);
                    // `|` removes duplicates (http://hl7.org/fhirpath/#union-collections). The
                    // same element reached twice is a duplicate; equal but distinct elements
                    // are kept, which is harmless for indexing and avoids deep comparisons.
                    let mut i = before;
                    while i < out.len() {
                        let n = out[i];
                        if out[start..before].iter().any(|m| same_node(m, &n)) {
                            out.remove(i);
                        } else {
                            i += 1;
                        }
                    }
                }
            }
            Ast::And(l, r) => {
                // Three-valued logic (http://hl7.org/fhirpath/#and): false wins over empty.
                let a = l.boolean(focus, cx);
                if a == Some(false) {
                    out.push(bool_node(false));
                    return;
                }
                match (a, r.boolean(focus, cx)) {
                    (_, Some(false)) => out.push(bool_node(false)),
                    (Some(true), Some(true)) => out.push(bool_node(true)),
                    _ => {}
                }
            }
            Ast::Or(l, r) => {
                // http://hl7.org/fhirpath/#or: true wins over empty.
                let a = l.boolean(focus, cx);
                if a == Some(true) {
                    out.push(bool_node(true));
                    return;
                }
                match (a, r.boolean(focus, cx)) {
                    (_, Some(true)) => out.push(bool_node(true)),
                    (Some(false), Some(false)) => out.push(bool_node(false)),
                    _ => {}
                }
            }
            Ast::Equals {
                left,
                right,
                negate,
            } => {
                if let Some(eq) = equals(left, right, focus, cx) {
                    out.push(bool_node(eq != *negate));
                }
            }
        }
    }

    /// The input collection of a step: the focus itself for a path start, without copying.
    fn input<'f, 'a>(&self, focus: &'f [Node<'a>], cx: &Ctx<'a>) -> Cow<'f, [Node<'a>]> {
        match self {
            Ast::This => Cow::Borrowed(focus),
            _ => {
                let mut v = Vec::new();
                self.eval(focus, cx, &mut v);
                Cow::Owned(v)
            }
        }
    }

    /// Evaluates a criteria with `item` as `$this`, reusing `scratch`.
    fn test<'a>(&self, item: &Node<'a>, cx: &Ctx<'a>, scratch: &mut Vec<Node<'a>>) -> Option<bool> {
        scratch.clear();
        self.eval(std::slice::from_ref(item), cx, scratch);
        singleton_bool(scratch)
    }

    fn boolean<'a>(&self, focus: &[Node<'a>], cx: &Ctx<'a>) -> Option<bool> {
        singleton_bool(&self.input(focus, cx))
    }
}

/// Singleton evaluation of collections (http://hl7.org/fhirpath/#singleton-evaluation-of-collections):
/// a lone boolean is itself, any other lone item is true, empty is unknown; several items are
/// an error, treated as unknown.
fn singleton_bool(items: &[Node<'_>]) -> Option<bool> {
    match items {
        [n] => Some(n.value.as_bool().unwrap_or(true)),
        _ => None,
    }
}

fn same_node(a: &Node<'_>, b: &Node<'_>) -> bool {
    std::ptr::eq(a.value, b.value) && a.type_hint == b.type_hint
}

/// `=` (http://hl7.org/fhirpath/#equals): empty if either side is empty, false when the sizes
/// differ, else item-wise equality. Literal operands are compared in place.
fn equals<'a>(left: &Ast, right: &Ast, focus: &[Node<'a>], cx: &Ctx<'a>) -> Option<bool> {
    fn literal(a: &Ast) -> Option<&Value> {
        match a {
            Ast::Literal(v) => Some(v),
            _ => None,
        }
    }
    match (literal(left), literal(right)) {
        (Some(a), Some(b)) => Some(value_eq(a, b)),
        (None, Some(lit)) | (Some(lit), None) => {
            let other = if literal(left).is_some() { right } else { left };
            match &*other.input(focus, cx) {
                [] => None,
                [n] => Some(value_eq(n.value, lit)),
                _ => Some(false),
            }
        }
        (None, None) => {
            let l = left.input(focus, cx);
            let r = right.input(focus, cx);
            if l.is_empty() || r.is_empty() {
                None
            } else {
                Some(
                    l.len() == r.len()
                        && l.iter()
                            .zip(r.iter())
                            .all(|(a, b)| value_eq(a.value, b.value)),
                )
            }
        }
    }
}

fn value_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // With arbitrary_precision, `Number` equality is textual; `1.0 = 1` holds in FHIRPath.
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Pushes the children named `name`, flattening arrays. When there is no such key, a choice
/// element `name[x]` is looked for: a key `name` + a data type name
/// (http://hl7.org/fhir/R4/formats.html#choice), whose suffix becomes the type hint.
fn push_children<'a>(value: &'a Value, name: &str, out: &mut Vec<Node<'a>>) {
    let Value::Object(map) = value else {
        return;
    };
    if let Some(v) = map.get(name) {
        push_flat(v, None, out);
        return;
    }
    for (key, v) in map {
        if let Some(suffix) = key.strip_prefix(name)
            && CHOICE_TYPES.contains(&suffix)
        {
            // A choice element has at most one variant present.
            push_flat(v, Some(suffix), out);
            return;
        }
    }
}

fn push_flat<'a>(v: &'a Value, type_hint: Option<&'a str>, out: &mut Vec<Node<'a>>) {
    match v {
        Value::Array(items) => out.extend(
            items
                .iter()
                .filter(|i| !i.is_null())
                .map(|value| Node { value, type_hint }),
        ),
        Value::Null => {}
        _ => out.push(Node {
            value: v,
            type_hint,
        }),
    }
}

/// Data types that can appear as a choice suffix in R4 (the open type list plus `Meta`, all
/// capitalised as in JSON keys: http://hl7.org/fhir/R4/datatypes.html#open).
const CHOICE_TYPES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

/// Specialisations of Quantity in R4 (http://hl7.org/fhir/R4/datatypes.html#quantity), which
/// `ofType(Quantity)` also selects.
const QUANTITY_KINDS: &[&str] = &["Age", "Count", "Distance", "Duration"];

/// Whether a node is of type `wanted`; a node of unknown type is assumed to be (see module docs).
fn node_is(n: &Node<'_>, wanted: &str) -> bool {
    n.type_hint.is_none_or(|h| type_matches(h, wanted))
}

/// `actual` is a type hint (capitalised choice suffix or resource type); `wanted` a type name as
/// written in the expression, where FHIR primitives are lower-case (`dateTime` ~ `DateTime`).
fn type_matches(actual: &str, wanted: &str) -> bool {
    if same_type_name(actual, wanted) {
        return true;
    }
    match wanted {
        "Quantity" => QUANTITY_KINDS.contains(&actual),
        "Resource" => is_resource_type(actual),
        "DomainResource" => {
            is_resource_type(actual) && !matches!(actual, "Bundle" | "Binary" | "Parameters")
        }
        _ => false,
    }
}

fn same_type_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match (a.split_first(), b.split_first()) {
        (Some((x, a_rest)), Some((y, b_rest))) => x.eq_ignore_ascii_case(y) && a_rest == b_rest,
        _ => false,
    }
}

fn is_resource_type(name: &str) -> bool {
    is_type_name(name) && !CHOICE_TYPES.contains(&name)
}

/// A resource type name as it appears in references: `[A-Z][A-Za-z0-9]*`.
fn is_type_name(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `resolve()` without fetching: the target's type comes from the reference
/// (http://hl7.org/fhir/R4/references.html#literal), a contained resource is returned itself.
fn resolve<'a>(n: &Node<'a>, cx: &Ctx<'a>) -> Option<Node<'a>> {
    let reference = match n.value {
        Value::String(s) => Some(s.as_str()),
        v => v.get("reference").and_then(Value::as_str),
    };
    if let Some(r) = reference {
        if let Some(id) = r.strip_prefix('#') {
            // http://hl7.org/fhir/R4/references.html#contained: `#` alone is the container.
            if id.is_empty() {
                return Some(cx.root);
            }
            let contained = cx.root.value.get("contained")?.as_array()?;
            let value = contained
                .iter()
                .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
            return Some(Node {
                value,
                type_hint: value.get("resourceType").and_then(Value::as_str),
            });
        }
        if let Some(ty) = reference_type(r) {
            return Some(Node {
                value: n.value,
                type_hint: Some(ty),
            });
        }
    }
    // Logical references and `urn:uuid:` ones may still state the target type in
    // `Reference.type`, a type name or its StructureDefinition URL.
    let ty = n.value.get("type")?.as_str()?.rsplit('/').next()?;
    is_type_name(ty).then_some(Node {
        value: n.value,
        type_hint: Some(ty),
    })
}

/// The type of `[base/]Type/id[/_history/vid]`, if the reference has that shape.
fn reference_type(r: &str) -> Option<&'static str> {
    crate::fhir::types::literal_reference(r).map(|(ty, _)| ty.as_str())
}

// ---------------------------------------------------------------------------------------------
// Lexer (http://hl7.org/fhirpath/#lexical-elements, subset)

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A backtick-delimited identifier: always an element name, never a keyword or type.
    Delimited(String),
    Str(String),
    Num(String),
    This,
    Resource,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Pipe,
    Eq,
    Ne,
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    pos: usize,
}

fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let c = bytes[i];
        let word_end = |from: usize| {
            let mut j = from;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            j
        };
        let tok = match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'.' => single(&mut i, Tok::Dot),
            b'(' => single(&mut i, Tok::LParen),
            b')' => single(&mut i, Tok::RParen),
            b'[' => single(&mut i, Tok::LBracket),
            b']' => single(&mut i, Tok::RBracket),
            b',' => single(&mut i, Tok::Comma),
            b'|' => single(&mut i, Tok::Pipe),
            b'=' => single(&mut i, Tok::Eq),
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Tok::Ne
            }
            b'\'' => {
                let (s, next) = string_literal(src, i)?;
                i = next;
                Tok::Str(s)
            }
            b'`' => {
                let len = src[i + 1..]
                    .find('`')
                    .ok_or_else(|| ParseError::new(i, "unterminated delimited identifier"))?;
                let name = &src[i + 1..i + 1 + len];
                if name.is_empty() {
                    return Err(ParseError::new(i, "empty delimited identifier"));
                }
                i += len + 2;
                Tok::Delimited(name.to_owned())
            }
            b'$' | b'%' => {
                i = word_end(i + 1);
                match &src[start..i] {
                    "$this" => Tok::This,
                    "%resource" | "%context" | "%rootResource" => Tok::Resource,
                    other => {
                        return Err(ParseError::new(
                            start,
                            format!("unsupported variable '{other}'"),
                        ));
                    }
                }
            }
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                Tok::Num(src[start..i].to_owned())
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                i = word_end(i);
                Tok::Ident(src[start..i].to_owned())
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(ParseError::new(
                    i,
                    format!("unsupported operator or character '{ch}'"),
                ));
            }
        };
        out.push(Token { tok, pos: start });
    }
    Ok(out)
}

fn single(i: &mut usize, tok: Tok) -> Tok {
    *i += 1;
    tok
}

/// A single-quoted string with the escapes of http://hl7.org/fhirpath/#string; returns the
/// decoded text and the offset after the closing quote.
fn string_literal(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let body = start + 1;
    let mut chars = src[body..].char_indices();
    while let Some((off, ch)) = chars.next() {
        match ch {
            '\'' => return Ok((out, body + off + 1)),
            '\\' => {
                let Some((_, esc)) = chars.next() else { break };
                match esc {
                    '\'' | '"' | '`' | '\\' | '/' => out.push(esc),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        let decoded = (hex.len() == 4)
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                ParseError::new(body + off, "invalid \\u escape in string")
                            })?;
                        out.push(decoded);
                    }
                    _ => return Err(ParseError::new(body + off, "invalid escape in string")),
                }
            }
            _ => out.push(ch),
        }
    }
    Err(ParseError::new(start, "unterminated string literal"))
}

// ---------------------------------------------------------------------------------------------
// Parser: recursive descent over the precedence table of http://hl7.org/fhirpath/#operator-precedence
// (from loosest): or, and, = !=, |, is as, then `.` invocation and `[]` indexer.

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
}

const KEYWORDS: &[&str] = &[
    "and", "or", "xor", "implies", "is", "as", "div", "mod", "in", "contains",
];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |t| t.pos)
    }

    fn error(&self, message: &str) -> ParseError {
        let message = if self.pos < self.tokens.len() {
            message.to_owned()
        } else {
            format!("{message}: unexpected end of expression")
        };
        ParseError::new(self.offset(), message)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok, message: &str) -> Result<(), ParseError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.error(message))
        }
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(s)) if s == kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expression(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.and_expr()?;
        while self.eat_keyword("or") {
            let right = self.and_expr()?;
            left = Ast::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.equality()?;
        while self.eat_keyword("and") {
            let right = self.equality()?;
            left = Ast::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.union()?;
        loop {
            let negate = if self.eat(&Tok::Eq) {
                false
            } else if self.eat(&Tok::Ne) {
                true
            } else {
                return Ok(left);
            };
            let right = self.union()?;
            left = Ast::Equals {
                left: Box::new(left),
                right: Box::new(right),
                negate,
            };
        }
    }

    fn union(&mut self) -> Result<Ast, ParseError> {
        let first = self.type_expr()?;
        if self.peek() != Some(&Tok::Pipe) {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.eat(&Tok::Pipe) {
            terms.push(self.type_expr()?);
        }
        Ok(Ast::Union(terms))
    }

    fn type_expr(&mut self) -> Result<Ast, ParseError> {
        let mut left = self.postfix()?;
        loop {
            if self.eat_keyword("is") {
                let ty = self.type_specifier()?;
                left = Ast::Is {
                    base: Box::new(left),
                    ty,
                };
            } else if self.eat_keyword("as") {
                let ty = self.type_specifier()?;
                left = Ast::OfType {
                    base: Box::new(left),
                    ty,
                };
            } else {
                return Ok(left);
            }
        }
    }

    /// `Type`, `FHIR.Type` or `System.Type` (http://hl7.org/fhirpath/#models).
    fn type_specifier(&mut self) -> Result<Box<str>, ParseError> {
        let Some(Tok::Ident(first) | Tok::Delimited(first)) = self.peek().cloned() else {
            return Err(self.error("expected a type name"));
        };
        self.pos += 1;
        if matches!(first.as_str(), "FHIR" | "System") && self.eat(&Tok::Dot) {
            let Some(Tok::Ident(name) | Tok::Delimited(name)) = self.peek().cloned() else {
                return Err(self.error("expected a type name after the namespace"));
            };
            self.pos += 1;
            return Ok(name.into());
        }
        Ok(first.into())
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut ast = self.term()?;
        loop {
            if self.eat(&Tok::Dot) {
                ast = self.invocation(Some(ast))?;
            } else if self.eat(&Tok::LBracket) {
                let at = self.offset();
                let index = match self.peek() {
                    Some(Tok::Num(n)) => n.parse::<usize>().ok(),
                    _ => None,
                }
                .ok_or_else(|| {
                    ParseError::new(at, "only a non-negative integer literal can index")
                })?;
                self.pos += 1;
                self.expect(&Tok::RBracket, "expected ']'")?;
                ast = Ast::Index {
                    base: Box::new(ast),
                    index,
                };
            } else {
                return Ok(ast);
            }
        }
    }

    fn term(&mut self) -> Result<Ast, ParseError> {
        let at = self.offset();
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("expected an expression"));
        };
        match tok {
            Tok::Str(s) => {
                self.pos += 1;
                Ok(Ast::Literal(Value::String(s)))
            }
            Tok::Num(n) => {
                self.pos += 1;
                serde_json::from_str::<Value>(&n)
                    .map(Ast::Literal)
                    .map_err(|_| ParseError::new(at, "invalid number"))
            }
            Tok::Ident(w) if w == "true" || w == "false" => {
                self.pos += 1;
                Ok(Ast::Literal(Value::Bool(w == "true")))
            }
            Tok::LParen => {
                self.pos += 1;
                let inner = self.expression()?;
                self.expect(&Tok::RParen, "expected ')'")?;
                Ok(inner)
            }
            Tok::This => {
                self.pos += 1;
                Ok(Ast::This)
            }
            Tok::Resource => {
                self.pos += 1;
                Ok(Ast::Resource)
            }
            Tok::Ident(_) | Tok::Delimited(_) => self.invocation(None),
            _ => Err(self.error("expected an expression")),
        }
    }

    /// A member or function invocation on `base`, or at a path start when `base` is `None`.
    fn invocation(&mut self, base: Option<Ast>) -> Result<Ast, ParseError> {
        let at = self.offset();
        let (name, delimited) = match self.peek().cloned() {
            Some(Tok::Ident(n)) => (n, false),
            Some(Tok::Delimited(n)) => (n, true),
            _ => return Err(self.error("expected an element or function name")),
        };
        self.pos += 1;
        if !delimited && self.eat(&Tok::LParen) {
            return self.function(&name, at, base.unwrap_or(Ast::This));
        }
        if base.is_none() && !delimited && KEYWORDS.contains(&name.as_str()) {
            return Err(ParseError::new(at, format!("unexpected keyword '{name}'")));
        }
        match base {
            // A path start in upper case names a type (http://hl7.org/fhirpath/#path-selection);
            // FHIR element names are lower case.
            None if !delimited && is_type_name(&name) => Ok(Ast::TypeName(name.into())),
            base => Ok(Ast::Child {
                base: Box::new(base.unwrap_or(Ast::This)),
                name: name.into(),
            }),
        }
    }

    /// A function call after its `(`; consumes the closing `)`.
    fn function(&mut self, name: &str, at: usize, base: Ast) -> Result<Ast, ParseError> {
        let base = Box::new(base);
        let no_args = |p: &mut Self| {
            if p.peek() == Some(&Tok::RParen) {
                Ok(())
            } else {
                Err(p.error("this function takes no arguments"))
            }
        };
        let ast = match name {
            "where" => Ast::Where {
                base,
                criteria: Box::new(self.expression()?),
            },
            "exists" => Ast::Exists {
                base,
                criteria: if self.peek() == Some(&Tok::RParen) {
                    None
                } else {
                    Some(Box::new(self.expression()?))
                },
            },
            "ofType" | "as" => Ast::OfType {
                base,
                ty: self.type_specifier()?,
            },
            "is" => Ast::Is {
                base,
                ty: self.type_specifier()?,
            },
            "extension" => match self.peek().cloned() {
                Some(Tok::Str(url)) => {
                    self.pos += 1;
                    Ast::Extension {
                        base,
                        url: url.into(),
                    }
                }
                _ => return Err(self.error("extension() takes a string literal URL")),
            },
            "empty" | "not" | "first" | "last" | "resolve" => {
                no_args(self)?;
                match name {
                    "empty" => Ast::Empty(base),
                    "not" => Ast::Not(base),
                    "first" => Ast::First(base),
                    "last" => Ast::Last(base),
                    _ => Ast::Resolve(base),
                }
            }
            _ => {
                return Err(ParseError::new(
                    at,
                    format!("unsupported function '{name}'"),
                ));
            }
        };
        self.expect(&Tok::RParen, "expected ')'")?;
        Ok(ast)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFINITIONS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/fhir-r4/search-parameters.json"
    );

    /// Entries in the R4 (4.0.1) definitions that carry an expression.
    const EXPRESSION_COUNT: usize = 1375;

    fn definitions() -> Value {
        let text = std::fs::read_to_string(DEFINITIONS).unwrap_or_else(|e| {
            panic!("the R4 search-parameter definitions must exist at {DEFINITIONS}: {e}")
        });
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{DEFINITIONS} is not valid JSON: {e}"))
    }

    fn expressions(defs: &Value) -> Vec<(String, String)> {
        defs["entry"]
            .as_array()
            .expect("definitions Bundle has entries")
            .iter()
            .filter_map(|e| {
                let r = &e["resource"];
                Some((
                    r["id"].as_str()?.to_owned(),
                    r["expression"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    fn blood_pressure() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "bp",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs"
            }]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                                 "display": "Blood pressure panel"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-05-01T08:30:00Z",
            "_effectiveDateTime": {"extension": []},
            "performer": [{"reference": "Practitioner/x"}, {"reference": "Organization/y"}],
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        })
    }

    fn heart_rate() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "hr",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "http://example.org/fhir/Patient/p1/_history/2"},
            "effectivePeriod": {"start": "2024-05-01T08:00:00Z", "end": "2024-05-01T09:00:00Z"},
            "valueQuantity": {"value": 72, "unit": "beats/minute",
                              "system": "http://unitsofmeasure.org", "code": "/min"}
        })
    }

    fn coded_observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "smoking",
            "status": "final",
            "code": {"text": "Smoking status"},
            "subject": {"reference": "urn:uuid:0b5f8a8e-5e0e-4b56-9f0e-7c1ab1b0ce50",
                        "type": "Patient"},
            "valueCodeableConcept": {"text": "Never smoker"}
        })
    }

    fn patient(deceased: Option<(&str, Value)>) -> Value {
        let mut p = json!({
            "resourceType": "Patient",
            "id": "p1",
            "extension": [
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                 "valueCode": "F"},
                {"url": "http://example.org/other", "valueString": "x"}
            ],
            "name": [
                {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
                {"use": "maiden", "family": "Windsor"}
            ],
            "telecom": [
                {"system": "phone", "value": "555-0100"},
                {"system": "email", "value": "p@example.org"},
                {"system": "phone", "value": "555-0101", "use": "mobile"}
            ],
            "birthDate": "1974-12-25",
            "_birthDate": {"extension": [{"url": "http://example.org/time", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
            "contained": [{"resourceType": "Practitioner", "id": "gp"}],
            "generalPractitioner": [
                {"reference": "#gp"},
                {"reference": "https://other.example/fhir/Organization/o1/_history/7"}
            ],
            "link": [{"other": {"reference": "RelatedPerson/r1"}, "type": "seealso"}]
        });
        if let Some((key, value)) = deceased {
            p[key] = value;
        }
        p
    }

    /// Expected result items: value and type hint.
    type Expected<'h> = Vec<(Value, Option<&'h str>)>;

    /// (resource, expression, expected items), compared exactly and in order.
    fn check(cases: &[(&Value, &str, Expected<'_>)]) {
        for (resource, src, expected) in cases {
            let expr = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            let got: Expected<'_> = expr
                .evaluate(resource)
                .into_iter()
                .map(|n| (n.value.clone(), n.type_hint))
                .collect();
            assert_eq!(&got, expected, "{src} on {}", resource["id"]);
        }
    }

    #[test]
    fn parses_every_r4_definition() {
        let defs = definitions();
        let exprs = expressions(&defs);
        assert_eq!(
            exprs.len(),
            EXPRESSION_COUNT,
            "expressions in {DEFINITIONS}"
        );
        let failures: Vec<String> = exprs
            .iter()
            .filter_map(|(id, src)| parse(src).err().map(|e| format!("{id}: {src}: {e}")))
            .collect();
        assert!(failures.is_empty(), "unparsed:\n{}", failures.join("\n"));
    }

    #[test]
    fn every_r4_definition_evaluates_on_samples() {
        let defs = definitions();
        let samples = [
            blood_pressure(),
            heart_rate(),
            coded_observation(),
            patient(None),
            defs.clone(),
        ];
        let mut nonempty = 0;
        for (_, src) in expressions(&defs) {
            let expr = parse(&src).unwrap();
            for s in &samples {
                nonempty += usize::from(!expr.evaluate(s).is_empty());
            }
        }
        // Nothing panics, and the samples do hit a fair number of the definitions.
        assert!(nonempty > 30, "only {nonempty} non-empty results");
    }

    #[test]
    fn observation_paths() {
        let bp = blood_pressure();
        let hr = heart_rate();
        let coded = coded_observation();
        let q = |v: i64, unit: &str, code: &str| json!({"value": v, "unit": unit, "system": "http://unitsofmeasure.org", "code": code});
        check(&[
            (&bp, "Observation.code", vec![(bp["code"].clone(), None)]),
            (
                &bp,
                "Observation.effective",
                vec![(json!("2024-05-01T08:30:00Z"), Some("DateTime"))],
            ),
            (
                &hr,
                "Observation.effective",
                vec![(hr["effectivePeriod"].clone(), Some("Period"))],
            ),
            (
                &hr,
                "(Observation.value as Quantity)",
                vec![(q(72, "beats/minute", "/min"), Some("Quantity"))],
            ),
            (
                &hr,
                "Observation.value.as(Quantity)",
                vec![(q(72, "beats/minute", "/min"), Some("Quantity"))],
            ),
            (
                &hr,
                "Observation.value.ofType(Quantity)",
                vec![(q(72, "beats/minute", "/min"), Some("Quantity"))],
            ),
            (&hr, "Observation.value.ofType(CodeableConcept)", vec![]),
            (&hr, "(Observation.value as string)", vec![]),
            (&bp, "(Observation.value as Quantity)", vec![]),
            (&hr, "Observation.value.value", vec![(json!(72), None)]),
            (
                &bp,
                "Observation.subject.where(resolve() is Patient)",
                vec![(json!({"reference": "Patient/p1"}), None)],
            ),
            (&bp, "Observation.subject.where(resolve() is Group)", vec![]),
            (
                &hr,
                "Observation.subject.where(resolve() is Patient)",
                vec![(hr["subject"].clone(), None)],
            ),
            (
                // `urn:uuid:` says nothing; `Reference.type` does.
                &coded,
                "Observation.subject.where(resolve() is Patient)",
                vec![(coded["subject"].clone(), None)],
            ),
            (
                &bp,
                "Observation.performer.where(resolve() is Practitioner)",
                vec![(json!({"reference": "Practitioner/x"}), None)],
            ),
            (
                &bp,
                "Observation.performer.where(resolve() is Organization)",
                vec![(json!({"reference": "Organization/y"}), None)],
            ),
            (
                &bp,
                "Observation.performer.resolve()",
                vec![
                    (json!({"reference": "Practitioner/x"}), Some("Practitioner")),
                    (json!({"reference": "Organization/y"}), Some("Organization")),
                ],
            ),
            (
                &bp,
                "Observation.component.code",
                vec![
                    (bp["component"][0]["code"].clone(), None),
                    (bp["component"][1]["code"].clone(), None),
                ],
            ),
            (
                &bp,
                "(Observation.component.value.ofType(Quantity))",
                vec![
                    (q(120, "mmHg", "mm[Hg]"), Some("Quantity")),
                    (q(80, "mmHg", "mm[Hg]"), Some("Quantity")),
                ],
            ),
            (
                &bp,
                "Observation.code | Observation.subject",
                vec![
                    (bp["code"].clone(), None),
                    (json!({"reference": "Patient/p1"}), None),
                ],
            ),
            (
                // From the file (Observation-component-value-quantity's sibling `combo-value-quantity`).
                &bp,
                "(Observation.value.ofType(Quantity)) | (Observation.value.ofType(SampledData)) | (Observation.component.value.ofType(Quantity)) | (Observation.component.value.ofType(SampledData))",
                vec![
                    (q(120, "mmHg", "mm[Hg]"), Some("Quantity")),
                    (q(80, "mmHg", "mm[Hg]"), Some("Quantity")),
                ],
            ),
            (
                &coded,
                "(Observation.value.ofType(string)) | (Observation.value.ofType(CodeableConcept)).text",
                vec![(json!("Never smoker"), None)],
            ),
            (&bp, "Patient.name", vec![]),
            (
                &bp,
                "Patient.name | Observation.status",
                vec![(json!("final"), None)],
            ),
            (
                &bp,
                "Observation.code | Observation.code",
                vec![(bp["code"].clone(), None)],
            ),
            (&bp, "Observation", vec![(bp.clone(), Some("Observation"))]),
            (
                &bp,
                "Observation | Observation.component",
                vec![
                    (bp.clone(), Some("Observation")),
                    (bp["component"][0].clone(), None),
                    (bp["component"][1].clone(), None),
                ],
            ),
            (
                &bp,
                "Observation.category.coding.code",
                vec![(json!("vital-signs"), None)],
            ),
            (
                &bp,
                "Observation.component.code.coding.code.first()",
                vec![(json!("8480-6"), None)],
            ),
            (
                &bp,
                "Observation.component[1].value.value",
                vec![(json!(80), None)],
            ),
            (&bp, "Observation.component[2]", vec![]),
            (
                &bp,
                "Observation.performer.exists()",
                vec![(json!(true), Some("Boolean"))],
            ),
            (
                &bp,
                "Observation.value.exists()",
                vec![(json!(false), Some("Boolean"))],
            ),
            (&bp, "Resource.id", vec![(json!("bp"), None)]),
            (
                &bp,
                "DomainResource.meta.profile",
                vec![(json!("http://hl7.org/fhir/StructureDefinition/bp"), None)],
            ),
            (
                &bp,
                "%resource.id | $this.status",
                vec![(json!("bp"), None), (json!("final"), None)],
            ),
            (
                &bp,
                "Observation.component.where(value.value = 80).code.coding.code",
                vec![(json!("8462-4"), None)],
            ),
            (
                &bp,
                "Observation is Observation",
                vec![(json!(true), Some("Boolean"))],
            ),
            (
                &bp,
                "Observation.effective is dateTime",
                vec![(json!(true), Some("Boolean"))],
            ),
            (
                &bp,
                "Observation.effective is Period",
                vec![(json!(false), Some("Boolean"))],
            ),
        ]);
    }

    #[test]
    fn patient_paths() {
        let alive = patient(None);
        let not_deceased = patient(Some(("deceasedBoolean", json!(false))));
        let deceased = patient(Some(("deceasedBoolean", json!(true))));
        let died_on = patient(Some(("deceasedDateTime", json!("2020-01-01"))));
        let deceased_expr = "Patient.deceased.exists() and Patient.deceased != false";
        let t = (json!(true), Some("Boolean"));
        let f = (json!(false), Some("Boolean"));
        check(&[
            (
                &alive,
                "Patient.name.family",
                vec![(json!("Chalmers"), None), (json!("Windsor"), None)],
            ),
            (
                &alive,
                "Patient.name.given",
                vec![(json!("Peter"), None), (json!("James"), None)],
            ),
            (
                &alive,
                "Patient.telecom.where(system='phone')",
                vec![
                    (alive["telecom"][0].clone(), None),
                    (alive["telecom"][2].clone(), None),
                ],
            ),
            (
                &alive,
                "Patient.telecom.where(system='email') | Person.telecom.where(system='email')",
                vec![(alive["telecom"][1].clone(), None)],
            ),
            (
                &alive,
                "Patient.telecom.where(system = 'phone' and use = 'mobile').value",
                vec![(json!("555-0101"), None)],
            ),
            (
                &alive,
                "Patient.telecom.where(system != 'phone').value",
                vec![(json!("p@example.org"), None)],
            ),
            (
                &alive,
                "Patient.birthDate",
                vec![(json!("1974-12-25"), None)],
            ),
            (&alive, deceased_expr, vec![f.clone()]),
            (&not_deceased, deceased_expr, vec![f.clone()]),
            (&deceased, deceased_expr, vec![t.clone()]),
            (&died_on, deceased_expr, vec![t.clone()]),
            (
                &died_on,
                "(Patient.deceased.ofType(dateTime))",
                vec![(json!("2020-01-01"), Some("DateTime"))],
            ),
            (&deceased, "(Patient.deceased.ofType(dateTime))", vec![]),
            (
                &alive,
                "Patient.generalPractitioner.where(resolve() is Practitioner)",
                vec![(json!({"reference": "#gp"}), None)],
            ),
            (
                &alive,
                "Patient.generalPractitioner.where(resolve() is Organization)",
                vec![(alive["generalPractitioner"][1].clone(), None)],
            ),
            (
                &alive,
                "Patient.generalPractitioner.resolve().first()",
                vec![(
                    json!({"resourceType": "Practitioner", "id": "gp"}),
                    Some("Practitioner"),
                )],
            ),
            (
                &alive,
                "Patient.link.other.where(resolve() is RelatedPerson)",
                vec![(json!({"reference": "RelatedPerson/r1"}), None)],
            ),
            // Extensions: the function and its long form.
            (
                &alive,
                "Patient.extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex').value",
                vec![(json!("F"), Some("Code"))],
            ),
            (
                &alive,
                "Patient.extension.where(url = 'http://example.org/other').value.ofType(string)",
                vec![(json!("x"), Some("String"))],
            ),
            (
                &alive,
                "Patient.extension('http://example.org/none')",
                vec![],
            ),
            (
                &alive,
                "Patient.name.where(use = 'maiden').exists()",
                vec![t.clone()],
            ),
            (
                &alive,
                "Patient.name.where(use = 'nickname').empty()",
                vec![t.clone()],
            ),
            (&alive, "Patient.active.exists().not()", vec![t.clone()]),
            (
                &alive,
                "Patient.name.exists(family = 'Windsor')",
                vec![t.clone()],
            ),
            (
                &alive,
                "Patient.gender = 'female' or Patient.birthDate = '1974-12-25'",
                vec![t],
            ),
            (&alive, "Patient.gender = 'female'", vec![]),
            (&alive, "Patient.name.family = 'Chalmers'", vec![f]),
        ]);
    }

    #[test]
    fn other_definition_forms() {
        let bundle = json!({
            "resourceType": "Bundle",
            "id": "doc",
            "type": "document",
            "entry": [
                {"resource": {"resourceType": "Composition", "id": "c"}},
                {"resource": {"resourceType": "Patient", "id": "p"}}
            ]
        });
        let plan = json!({
            "resourceType": "InsurancePlan",
            "id": "ip",
            "name": "Gold",
            "alias": ["G", "Gold plan"]
        });
        let activity = json!({
            "resourceType": "PlanDefinition",
            "id": "pd",
            "relatedArtifact": [
                {"type": "depends-on", "resource": "http://example.org/Library/a"},
                {"type": "composed-of", "resource": "http://example.org/PlanDefinition/b"}
            ],
            "library": ["http://example.org/Library/main"],
            "useContext": [
                {"code": {"code": "age"}, "valueRange": {"low": {"value": 18}}},
                {"code": {"code": "focus"}, "valueCodeableConcept": {"text": "diabetes"}}
            ]
        });
        let condition = json!({
            "resourceType": "Condition",
            "id": "c1",
            "onsetAge": {"value": 40, "unit": "a"}
        });
        check(&[
            (
                &bundle,
                "Bundle.entry[0].resource",
                vec![(json!({"resourceType": "Composition", "id": "c"}), None)],
            ),
            (
                &plan,
                "name | alias",
                vec![
                    (json!("Gold"), None),
                    (json!("G"), None),
                    (json!("Gold plan"), None),
                ],
            ),
            (
                &activity,
                "PlanDefinition.relatedArtifact.where(type='depends-on').resource | PlanDefinition.library",
                vec![
                    (json!("http://example.org/Library/a"), None),
                    (json!("http://example.org/Library/main"), None),
                ],
            ),
            (
                &activity,
                "(PlanDefinition.useContext.value.ofType(Quantity)) | (PlanDefinition.useContext.value.ofType(Range))",
                vec![(json!({"low": {"value": 18}}), Some("Range"))],
            ),
            (
                &activity,
                "(PlanDefinition.useContext.value as CodeableConcept)",
                vec![(json!({"text": "diabetes"}), Some("CodeableConcept"))],
            ),
            (
                &condition,
                "Condition.onset.ofType(Age) | Condition.onset.ofType(Range)",
                vec![(json!({"value": 40, "unit": "a"}), Some("Age"))],
            ),
            // Age specialises Quantity.
            (
                &condition,
                "Condition.onset.ofType(Quantity)",
                vec![(json!({"value": 40, "unit": "a"}), Some("Age"))],
            ),
            (&condition, "Condition.onset.ofType(string)", vec![]),
            (&condition, "'literal'", vec![]),
            (&condition, "1 = 1.0", vec![(json!(true), Some("Boolean"))]),
        ]);
    }

    #[test]
    fn reference_types() {
        let cases = [
            ("Patient/123", Some("Patient")),
            ("http://host/fhir/Patient/123", Some("Patient")),
            ("Patient/123/_history/2", Some("Patient")),
            (
                "https://host/base/Observation/a.b-c/_history/1",
                Some("Observation"),
            ),
            ("urn:uuid:0b5f8a8e-5e0e-4b56-9f0e-7c1ab1b0ce50", None),
            ("Patient?identifier=x|1", None),
            ("patient/123", None),
            ("Patient/", None),
            ("123", None),
        ];
        for (reference, expected) in cases {
            assert_eq!(reference_type(reference), expected, "{reference}");
        }
    }

    #[test]
    fn string_escapes() {
        let cases = [
            (r"'it\'s'", "it's"),
            (r"'a\\b\/c'", "a\\b/c"),
            (r"'tab\tnl\n'", "tab\tnl\n"),
            (r"'\u00e9t\u00E9'", "été"),
            ("'ünïcode'", "ünïcode"),
        ];
        for (src, expected) in cases {
            let expr = parse(src).unwrap();
            assert_eq!(expr.ast, Ast::Literal(json!(expected)), "{src}");
        }
    }

    #[test]
    fn parse_errors_carry_positions() {
        let cases = [
            (
                "Patient.name.",
                13,
                "expected an element or function name: unexpected end of expression",
            ),
            (
                "Patient.name.where(",
                19,
                "expected an expression: unexpected end of expression",
            ),
            ("Patient.name.foo(1)", 13, "unsupported function 'foo'"),
            (
                "Patient.birthDate < '2000'",
                18,
                "unsupported operator or character '<'",
            ),
            ("Patient.name = 'x", 15, "unterminated string literal"),
            (
                "Patient.name[x]",
                13,
                "only a non-negative integer literal can index",
            ),
            (
                "Patient.name implies true",
                13,
                "unexpected token (or unsupported operator)",
            ),
            (
                "(Patient.name",
                13,
                "expected ')': unexpected end of expression",
            ),
            (
                "Patient.extension(url)",
                18,
                "extension() takes a string literal URL",
            ),
            ("'bad \\q'", 5, "invalid escape in string"),
            ("%ucum", 0, "unsupported variable '%ucum'"),
            (
                "Patient.name.first(1)",
                19,
                "this function takes no arguments",
            ),
            ("and", 0, "unexpected keyword 'and'"),
        ];
        for (src, position, message) in cases {
            let err = parse(src).unwrap_err();
            assert_eq!(err, ParseError::new(position, message), "{src}");
            assert_eq!(err.to_string(), format!("{message} at position {position}"));
        }
    }
}

#[cfg(test)]
mod registry_tests {
    use super::parse;
    use crate::fhir::types::RESOURCE_TYPES;
    use crate::search::registry;

    /// Every expression the server will evaluate, as split per resource type in the embedded
    /// registry table (composite components included), parses.
    #[test]
    fn parses_every_registry_expression() {
        let mut parsed = 0;
        let mut failures = Vec::new();
        for ty in RESOURCE_TYPES {
            for p in registry::for_type(ty) {
                let exprs =
                    std::iter::once(p.expression).chain(p.components.iter().map(|c| c.expression));
                for e in exprs.filter(|e| !e.is_empty()) {
                    match parse(e) {
                        Ok(_) => parsed += 1,
                        Err(err) => failures.push(format!("{ty}.{}: {e}: {err}", p.code)),
                    }
                }
            }
        }
        assert!(failures.is_empty(), "unparsed:\n{}", failures.join("\n"));
        assert!(parsed > 1700, "only {parsed} expressions");
    }
}

//! The OpenAPI 3.1 document of every HTTP route (`/openapi.json`) and the Swagger UI explorer
//! at `/docs` (issue 9, items 1 and 2).
//!
//! The FHIR part is generated from the tables the server itself runs on, so it cannot claim
//! what the server does not do: the resource types and interactions of the CapabilityStatement
//! (`fhir::capability`), the search parameters of the registry (`search::registry`) and JSON
//! Schemas made from the R4 element tables the validator uses (`validate::schema`). The
//! other routes (OAuth, user and client management, ingestion) are described here, with the
//! schemas of their Rust request and response types derived by utoipa.
//!
//! The document is committed at `openapi/openapi.json`; `document_matches_the_committed_file`
//! fails when the two drift apart (`vitalbridge openapi > openapi/openapi.json` rewrites it),
//! and the API test `openapi::every_route_is_documented` checks that the router and the
//! document name the same routes.

use std::collections::BTreeMap;

use axum::Router;
use serde_json::{Value, json};
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::security::{
    ClientCredentials, Flow, Http, HttpAuthScheme, OAuth2, Scopes, SecurityRequirement,
    SecurityScheme,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    Components, Content, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, RefOr,
    Required, Response, ResponseBuilder, Schema, ServerBuilder,
};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::AppState;
use crate::fhir::capability::PATCH_FORMATS;
use crate::fhir::types::ResourceType;
use crate::search::registry::{self, ParamType};

/// Resource types described one by one, with their search parameters and schemas: those of
/// remote patient monitoring (DESIGN.md), billing and the audit trail. Every other type is
/// served alike and described once, under `/fhir/{type}`.
pub const DOCUMENTED_TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Device",
    "DeviceMetric",
    "Observation",
    "Group",
    "Consent",
    "Provenance",
    "Subscription",
    "Endpoint",
    "Coverage",
    "ChargeItemDefinition",
    "ChargeItem",
    "Invoice",
    "Claim",
    "PaymentReconciliation",
];

const FHIR_JSON: &str = "application/fhir+json";
const FHIR_XML: &str = "application/fhir+xml";
const BEARER: &str = "bearer";
const SMART: &str = "smart";
/// A confidential client's own credentials, for introspection and revocation.
const CLIENT_BASIC: &str = "clientBasic";

/// The router of `/openapi.json` and the explorer at `/docs`. Both are public
/// (`auth::routes::is_public`): they describe the API, they hold no data.
pub fn router() -> Router<AppState> {
    let config = Config::new(["/openapi.json"])
        // The public validator badge would send the document to swagger.io: offline, no.
        .validator_url("none")
        .try_it_out_enabled(true)
        .persist_authorization(true)
        .display_request_duration(true)
        .filter(true);
    SwaggerUi::new("/docs")
        .url("/openapi.json", document())
        .config(config)
        .into()
}

/// The whole document, the same for every server (the server URL is relative, so the explorer
/// calls the origin it was loaded from).
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    let roots: Vec<&str> = DOCUMENTED_TYPES
        .iter()
        .copied()
        .chain([
            "AuditEvent",
            "Bundle",
            "OperationOutcome",
            "Parameters",
            "CapabilityStatement",
        ])
        .collect();
    let mut schemas: BTreeMap<String, RefOr<Schema>> =
        crate::validate::schema::json_schemas(&roots)
            .into_iter()
            .map(|(name, schema)| (name, from_json(schema)))
            .collect();
    schemas.insert("JsonPatch".into(), from_json(json_patch_schema()));
    for (name, schema) in rust_schemas() {
        schemas.insert(name, schema);
    }

    fhir_system(&mut paths);
    for ty in DOCUMENTED_TYPES {
        fhir_type(&mut paths, TypePath::Named(ty));
    }
    fhir_type(&mut paths, TypePath::Any);
    audit_events(&mut paths);
    fhir_operations(&mut paths);
    oauth(&mut paths);
    management(&mut paths);
    ingestion(&mut paths);
    paths.add_path_operation(
        "/healthz",
        vec![HttpMethod::Get],
        public(
            op(
                "healthz",
                "Liveness: the process and its database answer",
                "Service",
            )
            .response("200", json_response("Alive", json!({"type": "object"})))
            .response(
                "503",
                json_response("The database does not answer", json!({"type": "object"})),
            ),
        ),
    );

    let mut components = Components::new();
    components.schemas = schemas;
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token from /auth/token (client credentials, SMART Backend \
                     Services or the authorization code flow), pasted as is",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        CLIENT_BASIC,
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Basic)
                .description(Some(
                    "A confidential client's id and secret, form-urlencoded then HTTP Basic \
                     (RFC 6749 section 2.3.1)",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        SMART,
        SecurityScheme::OAuth2(OAuth2::with_description(
            [Flow::ClientCredentials(ClientCredentials::new(
                "/auth/token",
                Scopes::from_iter([
                    (
                        "system/*.cruds",
                        "every interaction the client's role allows",
                    ),
                    ("system/*.rs", "read and search what the role allows"),
                    ("system/Observation.rs", "read and search Observations"),
                ]),
            ))],
            "SMART Backend Services with a client secret (HTTP Basic at the token endpoint); \
             the discovery document is /fhir/.well-known/smart-configuration",
        )),
    );

    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("vitalbridge")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "FHIR R4 server for remote patient monitoring: readings of Bluetooth and \
                     cellular devices become Device and Observation resources, served over a \
                     SMART-on-FHIR API, pushed by Subscriptions and billed monthly. The FHIR \
                     API is https://hl7.org/fhir/R4/http.html; every route but the public \
                     ones (metadata, discovery, OAuth, health, these docs) needs a bearer token.",
                ))
                .build(),
        )
        .servers(Some([ServerBuilder::new().url("/").build()]))
        .paths(paths)
        .components(Some(components))
        .tags(Some(
            [(
                "FHIR system",
                "Whole-system interactions and the CapabilityStatement",
            )]
            .into_iter()
            .chain(DOCUMENTED_TYPES.iter().map(|t| (*t, "")))
            .chain([
                ("AuditEvent", "The audit trail, written by the server only"),
                (
                    "FHIR other types",
                    "Every other R4 resource type, served alike",
                ),
                (
                    "OAuth",
                    "The built-in authorization server (SMART App Launch 2)",
                ),
                (
                    "Management",
                    "Clients and users of the built-in authorization server",
                ),
                (
                    "Ingestion",
                    "Readings from hubs, gateways and cellular devices",
                ),
                ("Service", "Liveness"),
            ])
            .map(|(name, text)| {
                TagBuilder::new()
                    .name(name)
                    .description((!text.is_empty()).then_some(text))
                    .build()
            }),
        ))
        .build();
    doc.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(SMART, ["system/*.cruds"]),
    ]);
    doc
}

/// The document as committed: pretty JSON with a final newline.
pub fn document_text() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}

/// A schema written as JSON (a literal here, or made from the FHIR tables): a `$ref` or an
/// inline schema. A shape utoipa cannot read would be a bug caught by the tests below
/// (`every_reference_resolves` counts the references).
fn from_json(v: Value) -> RefOr<Schema> {
    serde_json::from_value(v).unwrap_or_else(|_| RefOr::T(Schema::default()))
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn op(id: &str, summary: &str, tag: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .tag(tag)
}

/// An operation answered without a token.
fn public(b: OperationBuilder) -> Operation {
    b.securities(Some(Vec::new())).build()
}

fn param(name: &str, at: ParameterIn, required: bool, text: &str, schema: Value) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description((!text.is_empty()).then_some(text))
        .schema(Some(from_json(schema)))
        .build()
}

fn query(name: &str, text: &str) -> Parameter {
    param(
        name,
        ParameterIn::Query,
        false,
        text,
        json!({"type": "string"}),
    )
}

fn path_param(name: &str, text: &str) -> Parameter {
    param(
        name,
        ParameterIn::Path,
        true,
        text,
        // https://hl7.org/fhir/R4/datatypes.html#id
        json!({"type": "string", "pattern": "^[A-Za-z0-9\\-\\.]{1,64}$"}),
    )
}

fn header(name: &str, text: &str) -> Parameter {
    param(
        name,
        ParameterIn::Header,
        false,
        text,
        json!({"type": "string"}),
    )
}

/// A FHIR response: the resource in JSON (with its schema) or XML.
fn fhir_response(text: &str, schema: &str) -> Response {
    ResponseBuilder::new()
        .description(text)
        .content(FHIR_JSON, Content::new(Some(from_json(schema_ref(schema)))))
        .content(
            FHIR_XML,
            Content::new(Some(from_json(json!({"type": "string"})))),
        )
        .build()
}

fn json_response(text: &str, schema: Value) -> Response {
    ResponseBuilder::new()
        .description(text)
        .content("application/json", Content::new(Some(from_json(schema))))
        .build()
}

fn empty_response(text: &str) -> Response {
    ResponseBuilder::new().description(text).build()
}

/// Every error the FHIR API answers is an OperationOutcome with its status
/// (https://hl7.org/fhir/R4/http.html#summary): 400, 401, 403, 404, 405, 406, 409, 410, 412,
/// 413, 415, 422, 429, 500, 503.
fn with_errors(b: OperationBuilder) -> OperationBuilder {
    b.response(
        "default",
        fhir_response(
            "An error, described by an OperationOutcome (4xx for the request, 5xx for the \
             server)",
            "OperationOutcome",
        ),
    )
}

fn fhir_body(text: &str, schema: &str, required: bool) -> RequestBody {
    fhir_body_with(text, schema, required, None)
}

/// A FHIR request body; `example` fills the explorer's editor and is the body schemathesis
/// sends first.
fn fhir_body_with(text: &str, schema: &str, required: bool, example: Option<Value>) -> RequestBody {
    RequestBodyBuilder::new()
        .description(Some(text))
        .required(Some(if required {
            Required::True
        } else {
            Required::False
        }))
        .content(
            FHIR_JSON,
            ContentBuilder::new()
                .schema(Some(from_json(schema_ref(schema))))
                .example(example)
                .build(),
        )
        .content(
            FHIR_XML,
            Content::new(Some(from_json(json!({"type": "string"})))),
        )
        .build()
}

fn json_body(text: &str, schema: Value) -> RequestBody {
    RequestBodyBuilder::new()
        .description(Some(text))
        .required(Some(Required::True))
        .content("application/json", Content::new(Some(from_json(schema))))
        .build()
}

fn form_body(text: &str, fields: &[(&str, &str)], required: &[&str]) -> RequestBody {
    let props: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(n, d)| {
            (
                (*n).to_string(),
                json!({"type": "string", "description": d}),
            )
        })
        .collect();
    RequestBodyBuilder::new()
        .description(Some(text))
        .required(Some(Required::True))
        .content(
            "application/x-www-form-urlencoded",
            Content::new(Some(from_json(
                json!({"type": "object", "properties": props, "required": required}),
            ))),
        )
        .build()
}

/// Parameters every FHIR read and search takes (https://hl7.org/fhir/R4/http.html#parameters).
fn format_params() -> Vec<Parameter> {
    vec![
        query(
            "_format",
            "json, xml or a FHIR MIME type; overrides the Accept header",
        ),
        query("_pretty", "true: indented output"),
        query(
            "_summary",
            "true, text, data, count or false (https://hl7.org/fhir/R4/search.html#summary)",
        ),
        query("_elements", "Comma-separated elements to return"),
    ]
}

/// The result parameters of a search (https://hl7.org/fhir/R4/search.html#return).
fn result_params() -> Vec<Parameter> {
    let mut out = vec![
        query("_count", "Entries per page"),
        query("_sort", "Comma-separated parameters, `-` for descending"),
        query(
            "_include",
            "Type:parameter[:target] of referenced resources to add",
        ),
        query(
            "_revinclude",
            "Type:parameter of referring resources to add",
        ),
        query("_total", "none, estimate or accurate"),
        query(
            "_has",
            "Reverse chaining: _has:Type:parameter:parameter=value",
        ),
    ];
    out.extend(format_params());
    out
}

fn search_params_of(ty: &str) -> Vec<Parameter> {
    let mut out: Vec<Parameter> = registry::for_type(ty)
        .filter(|p| !p.expression.is_empty() || matches!(p.code, "_id" | "_lastUpdated"))
        .map(|p| {
            let hint = match p.kind {
                ParamType::Token => "[system|]code",
                ParamType::Reference => "Type/id, an id or a URL; chains with `.`",
                ParamType::Date => "a date with a prefix: eq, ne, gt, lt, ge, le, sa, eb, ap",
                ParamType::Quantity => "[prefix]number[|system|code]",
                ParamType::Number => "[prefix]number",
                ParamType::String => "starts with, case and accent insensitive; :exact, :contains",
                _ => "",
            };
            query(
                p.code,
                &format!("{} search parameter. {hint}", p.kind.as_str()),
            )
        })
        .collect();
    out.extend(result_params());
    out
}

/// Where a type's routes are described: one documented type, or `{type}` for the others.
#[derive(Clone, Copy)]
enum TypePath<'a> {
    Named(&'a str),
    Any,
}

impl TypePath<'_> {
    fn prefix(self) -> String {
        match self {
            TypePath::Named(t) => format!("/fhir/{t}"),
            TypePath::Any => "/fhir/{type}".into(),
        }
    }
    fn tag(self) -> &'static str {
        match self {
            TypePath::Named(t) => DOCUMENTED_TYPES
                .iter()
                .find(|d| **d == t)
                .copied()
                .unwrap_or("FHIR other types"),
            TypePath::Any => "FHIR other types",
        }
    }
    fn schema(self) -> &'static str {
        match self {
            TypePath::Named(t) => DOCUMENTED_TYPES
                .iter()
                .find(|d| **d == t)
                .copied()
                .unwrap_or(crate::validate::schema::ANY_RESOURCE),
            TypePath::Any => crate::validate::schema::ANY_RESOURCE,
        }
    }
    fn id(self, what: &str) -> String {
        match self {
            TypePath::Named(t) => format!("{what}{t}"),
            TypePath::Any => format!("{what}Any"),
        }
    }
    fn label(self) -> String {
        match self {
            TypePath::Named(t) => t.to_string(),
            TypePath::Any => "resource".into(),
        }
    }
    /// The `{type}` parameter: the types not described one by one.
    fn params(self) -> Vec<Parameter> {
        match self {
            TypePath::Named(_) => Vec::new(),
            TypePath::Any => {
                let others: Vec<&str> = ResourceType::all()
                    .map(|t| t.as_str())
                    .filter(|t| !DOCUMENTED_TYPES.contains(t) && *t != "AuditEvent")
                    .collect();
                vec![param(
                    "type",
                    ParameterIn::Path,
                    true,
                    "A FHIR R4 resource type",
                    json!({"type": "string", "enum": others}),
                )]
            }
        }
    }
    fn search_params(self) -> Vec<Parameter> {
        match self {
            TypePath::Named(t) => search_params_of(t),
            TypePath::Any => {
                let mut out = vec![
                    query("_id", "token search parameter. [system|]code"),
                    query("_lastUpdated", "date search parameter, with a prefix"),
                ];
                out.extend(result_params());
                out
            }
        }
    }
}

/// The interactions of one type (https://hl7.org/fhir/R4/http.html): search, create,
/// conditional update and delete, read, update, patch, delete, history and `$validate`.
fn fhir_type(paths: &mut Paths, t: TypePath<'_>) {
    let base = t.prefix();
    let label = t.label();
    let schema = t.schema();
    let tp = t.params();
    let with = |mut b: OperationBuilder, extra: Vec<Parameter>| {
        for p in tp.iter().cloned().chain(extra) {
            b = b.parameter(p);
        }
        with_errors(b)
    };
    let id = || path_param("id", "The resource's logical id");
    let bundle = || fhir_response("A Bundle of the results", "Bundle");
    let one = |text: &str| fhir_response(text, schema);

    paths.add_path_operation(
        &base,
        vec![HttpMethod::Get],
        with(
            op(&t.id("search"), &format!("Search {label}"), t.tag())
                .description(Some(
                    "search-type (https://hl7.org/fhir/R4/http.html#search)",
                ))
                .response("200", bundle()),
            t.search_params(),
        )
        .build(),
    );
    paths.add_path_operation(
        &base,
        vec![HttpMethod::Post],
        with(
            op(&t.id("create"), &format!("Create a {label}"), t.tag())
                .description(Some(
                    "create; with If-None-Exist a conditional create \
                     (https://hl7.org/fhir/R4/http.html#ccreate)",
                ))
                .request_body(Some(fhir_body_with(
                    "The new resource",
                    schema,
                    true,
                    super::openapi_examples::example(schema),
                )))
                .response("201", one("Created; Location and ETag name the version"))
                .response(
                    "200",
                    one("Conditional create: the match that already existed"),
                ),
            vec![
                header(
                    "If-None-Exist",
                    "A search: create only when nothing matches",
                ),
                header(
                    "Prefer",
                    "return=minimal, return=representation or return=OperationOutcome",
                ),
            ],
        )
        .build(),
    );
    paths.add_path_operation(
        &base,
        vec![HttpMethod::Put],
        with(
            op(
                &t.id("conditionalUpdate"),
                &format!("Update the one {label} the search matches"),
                t.tag(),
            )
            .description(Some(
                "conditional update (https://hl7.org/fhir/R4/http.html#cond-update)",
            ))
            .request_body(Some(fhir_body("The resource", schema, true)))
            .response("200", one("Updated"))
            .response("201", one("Created")),
            t.search_params(),
        )
        .build(),
    );
    paths.add_path_operation(
        &base,
        vec![HttpMethod::Delete],
        with(
            op(
                &t.id("conditionalDelete"),
                &format!("Delete the one {label} the search matches"),
                t.tag(),
            )
            .response("200", fhir_response("Deleted", "OperationOutcome"))
            .response("204", empty_response("Deleted")),
            t.search_params(),
        )
        .build(),
    );
    paths.add_path_operation(
        format!("{base}/_search"),
        vec![HttpMethod::Post],
        with(
            op(
                &t.id("searchPost"),
                &format!("Search {label} (form)"),
                t.tag(),
            )
            .request_body(Some(form_body(
                "The search parameters as a form",
                &[("_id", "token"), ("_count", "entries per page")],
                &[],
            )))
            .response("200", bundle()),
            Vec::new(),
        )
        .build(),
    );
    paths.add_path_operation(
        format!("{base}/_history"),
        vec![HttpMethod::Get],
        with(
            op(
                &t.id("historyType"),
                &format!("History of every {label}"),
                t.tag(),
            )
            .response("200", fhir_response("A history Bundle", "Bundle")),
            history_params(),
        )
        .build(),
    );
    paths.add_path_operation(
        format!("{base}/$validate"),
        vec![HttpMethod::Post],
        with(
            op(&t.id("validate"), &format!("Validate a {label}"), t.tag())
                .description(Some(
                    "https://hl7.org/fhir/R4/resource-operation-validate.html",
                ))
                .request_body(Some(fhir_body(
                    "The resource, or Parameters with it",
                    crate::validate::schema::ANY_RESOURCE,
                    true,
                )))
                .response("200", fhir_response("The outcome", "OperationOutcome")),
            Vec::new(),
        )
        .build(),
    );
    let mut read_params = vec![
        id(),
        header("If-None-Match", "W/\"version\": 304 when unchanged"),
        header("If-Modified-Since", "An HTTP date: 304 when unchanged"),
    ];
    read_params.extend(format_params());
    paths.add_path_operation(
        format!("{base}/{{id}}"),
        vec![HttpMethod::Get],
        with(
            op(&t.id("read"), &format!("Read a {label}"), t.tag())
                .response("200", one("The current version"))
                .response("304", empty_response("Not modified")),
            read_params,
        )
        .build(),
    );
    paths.add_path_operation(
        format!("{base}/{{id}}"),
        vec![HttpMethod::Put],
        with(
            op(
                &t.id("update"),
                &format!("Update (or create) a {label}"),
                t.tag(),
            )
            .request_body(Some(fhir_body(
                "The resource, with the same id",
                schema,
                true,
            )))
            .response("200", one("Updated"))
            .response("201", one("Created with the client's id")),
            vec![
                id(),
                header(
                    "If-Match",
                    "W/\"version\": update only that version (412 otherwise)",
                ),
                header("Prefer", "return=minimal, return=representation"),
            ],
        )
        .build(),
    );
    paths.add_path_operation(
        format!("{base}/{{id}}"),
        vec![HttpMethod::Patch],
        with(
            op(&t.id("patch"), &format!("Patch a {label}"), t.tag())
                .description(Some("JSON Patch (https://hl7.org/fhir/R4/http.html#patch)"))
                .request_body(Some(
                    RequestBodyBuilder::new()
                        .required(Some(Required::True))
                        .content(
                            PATCH_FORMATS[0],
                            Content::new(Some(from_json(schema_ref("JsonPatch")))),
                        )
                        .build(),
                ))
                .response("200", one("Patched")),
            vec![id(), header("If-Match", "W/\"version\"")],
        )
        .build(),
    );
    paths.add_path_operation(
        format!("{base}/{{id}}"),
        vec![HttpMethod::Delete],
        with(
            op(&t.id("delete"), &format!("Delete a {label}"), t.tag())
                .response("200", fhir_response("Deleted", "OperationOutcome"))
                .response("204", empty_response("Deleted")),
            vec![id()],
        )
        .build(),
    );
    let mut hist = vec![id()];
    hist.extend(history_params());
    paths.add_path_operation(
        format!("{base}/{{id}}/_history"),
        vec![HttpMethod::Get],
        with(
            op(
                &t.id("historyInstance"),
                &format!("History of a {label}"),
                t.tag(),
            )
            .response("200", fhir_response("A history Bundle", "Bundle")),
            hist,
        )
        .build(),
    );
    let mut vread = vec![id(), path_param("vid", "The version id")];
    vread.extend(format_params());
    paths.add_path_operation(
        format!("{base}/{{id}}/_history/{{vid}}"),
        vec![HttpMethod::Get],
        with(
            op(
                &t.id("vread"),
                &format!("Read a version of a {label}"),
                t.tag(),
            )
            .response("200", one("That version")),
            vread,
        )
        .build(),
    );
}

fn history_params() -> Vec<Parameter> {
    let mut out = vec![
        query("_count", "Entries per page"),
        query("_since", "Only versions after this instant"),
        query("_at", "The versions current at this instant"),
    ];
    out.extend(format_params());
    out
}

fn fhir_system(paths: &mut Paths) {
    let tag = "FHIR system";
    paths.add_path_operation(
        "/fhir/metadata",
        vec![HttpMethod::Get],
        public(with_errors(
            op("capabilities", "The CapabilityStatement", tag)
                .parameter(query("mode", "full (default) or normative"))
                .parameter(query("_format", "json or xml"))
                .response(
                    "200",
                    fhir_response("What this server supports", "CapabilityStatement"),
                ),
        )),
    );
    let mut system_search = vec![query("_type", "Comma-separated resource types")];
    system_search.extend(
        [
            ("_id", "token search parameter"),
            ("_lastUpdated", "date search parameter"),
        ]
        .map(|(n, d)| query(n, d)),
    );
    system_search.extend(result_params());
    let mut b = op("searchSystem", "Search every type", tag)
        .response("200", fhir_response("A Bundle of the results", "Bundle"));
    for p in system_search {
        b = b.parameter(p);
    }
    paths.add_path_operation("/fhir", vec![HttpMethod::Get], with_errors(b).build());
    paths.add_path_operation(
        "/fhir",
        vec![HttpMethod::Post],
        with_errors(
            op("batch", "A batch or transaction Bundle", tag)
                .description(Some(
                    "https://hl7.org/fhir/R4/http.html#transaction: a transaction is all or \
                     nothing; each batch entry succeeds or fails alone. Every entry is checked \
                     against the caller's access.",
                ))
                .request_body(Some(fhir_body("The Bundle", "Bundle", true)))
                .response("200", fhir_response("The response Bundle", "Bundle")),
        )
        .build(),
    );
    paths.add_path_operation(
        "/fhir/_search",
        vec![HttpMethod::Post],
        with_errors(
            op("searchSystemPost", "Search every type (form)", tag)
                .request_body(Some(form_body(
                    "The search parameters as a form",
                    &[("_type", "resource types"), ("_count", "entries per page")],
                    &[],
                )))
                .response("200", fhir_response("A Bundle of the results", "Bundle")),
        )
        .build(),
    );
    let mut b = op("historySystem", "History of every resource", tag)
        .response("200", fhir_response("A history Bundle", "Bundle"));
    for p in history_params() {
        b = b.parameter(p);
    }
    paths.add_path_operation(
        "/fhir/_history",
        vec![HttpMethod::Get],
        with_errors(b).build(),
    );
}

/// AuditEvent: read and searched; written by the server only, so every write answers 405.
fn audit_events(paths: &mut Paths) {
    let tag = "AuditEvent";
    let mut search = op("searchAuditEvent", "Search the audit trail (admins)", tag)
        .response("200", fhir_response("A Bundle of AuditEvents", "Bundle"));
    for p in search_params_of("AuditEvent") {
        search = search.parameter(p);
    }
    paths.add_path_operation(
        "/fhir/AuditEvent",
        vec![HttpMethod::Get],
        with_errors(search).build(),
    );
    paths.add_path_operation(
        "/fhir/AuditEvent/_search",
        vec![HttpMethod::Post],
        with_errors(
            op("searchPostAuditEvent", "Search the audit trail (form)", tag)
                .request_body(Some(form_body("The search parameters", &[], &[])))
                .response("200", fhir_response("A Bundle of AuditEvents", "Bundle")),
        )
        .build(),
    );
    paths.add_path_operation(
        "/fhir/AuditEvent/{id}",
        vec![HttpMethod::Get],
        with_errors(
            op("readAuditEvent", "Read an AuditEvent", tag)
                .parameter(path_param("id", "The event's id"))
                .response("200", fhir_response("The event", "AuditEvent")),
        )
        .build(),
    );
    paths.add_path_operation(
        "/fhir/AuditEvent/{id}/_history/{vid}",
        vec![HttpMethod::Get],
        with_errors(
            op("vreadAuditEvent", "Read an AuditEvent's only version", tag)
                .parameter(path_param("id", "The event's id"))
                .parameter(path_param("vid", "1"))
                .response("200", fhir_response("The event", "AuditEvent")),
        )
        .build(),
    );
    let refused = |id: &str| {
        // The token is checked before the method (401, 403).
        with_errors(
            op(id, "Refused: the server alone writes the audit trail", tag).response(
                "405",
                fhir_response("Method not allowed", "OperationOutcome"),
            ),
        )
    };
    for (path, methods, id, with_id) in [
        (
            "/fhir/AuditEvent",
            vec![HttpMethod::Post, HttpMethod::Put, HttpMethod::Delete],
            "writeAuditEvents",
            false,
        ),
        (
            "/fhir/AuditEvent/_history",
            vec![HttpMethod::Get],
            "historyAuditEvents",
            false,
        ),
        (
            "/fhir/AuditEvent/{id}",
            vec![HttpMethod::Put, HttpMethod::Delete, HttpMethod::Patch],
            "writeAuditEvent",
            true,
        ),
        (
            "/fhir/AuditEvent/{id}/_history",
            vec![HttpMethod::Get],
            "historyAuditEvent",
            true,
        ),
    ] {
        for m in methods {
            let id = format!("{id}{}", method_name(&m));
            let mut b = refused(&id);
            if with_id {
                b = b.parameter(path_param("id", "The event's id"));
            }
            paths.add_path_operation(path, vec![m], b.build());
        }
    }
}

/// The operations (https://hl7.org/fhir/R4/operations.html) and the Subscriptions Backport's.
fn fhir_operations(paths: &mut Paths) {
    let mut lastn = op("lastn", "The newest Observations per code", "Observation")
        .description(Some(
            "https://hl7.org/fhir/R4/observation-operation-lastn.html: the newest `max` \
             Observations of each code among those the other parameters match",
        ))
        .parameter(query("max", "Observations per code (default 1)"))
        .response("200", fhir_response("A searchset Bundle", "Bundle"));
    for p in search_params_of("Observation") {
        lastn = lastn.parameter(p);
    }
    paths.add_path_operation(
        "/fhir/Observation/$lastn",
        vec![HttpMethod::Get],
        with_errors(lastn).build(),
    );
    paths.add_path_operation(
        "/fhir/Patient/{id}/$everything",
        vec![HttpMethod::Get],
        with_errors(
            op("everything", "Everything about a patient", "Patient")
                .description(Some(
                    "https://hl7.org/fhir/R4/patient-operation-everything.html",
                ))
                .parameter(path_param("id", "The patient's id"))
                .parameter(query("_type", "Only these resource types"))
                .parameter(query("_since", "Only resources changed after this instant"))
                .parameter(query("_count", "Entries per page"))
                .response("200", fhir_response("A searchset Bundle", "Bundle")),
        )
        .build(),
    );
    paths.add_path_operation(
        "/fhir/Invoice/{id}/$record-payment",
        vec![HttpMethod::Post],
        with_errors(
            op(
                "recordPayment",
                "Record a payment of an invoice (admins)",
                "Invoice",
            )
            .description(Some(
                "Parameters `amount` (Money), `date` and `identifier`: a \
                     PaymentReconciliation is written and the Invoice answered, `balanced` once \
                     paid in full",
            ))
            .parameter(path_param("id", "The invoice's id"))
            .request_body(Some(fhir_body("Parameters", "Parameters", true)))
            .response(
                "200",
                fhir_response("The Invoice after the payment", "Invoice"),
            ),
        )
        .build(),
    );
    for (path, id, summary, with_id) in [
        (
            "/fhir/Subscription/$status",
            "subscriptionStatuses",
            "The status of the caller's Subscriptions",
            false,
        ),
        (
            "/fhir/Subscription/{id}/$status",
            "subscriptionStatus",
            "The status of a Subscription",
            true,
        ),
        (
            "/fhir/Subscription/{id}/$events",
            "subscriptionEvents",
            "Past notification events of a Subscription",
            true,
        ),
    ] {
        for m in [HttpMethod::Get, HttpMethod::Post] {
            let mut b = op(&format!("{id}{}", method_name(&m)), summary, "Subscription")
                .description(Some(
                    "Subscriptions R5 Backport IG (http://hl7.org/fhir/uv/subscriptions-backport/)",
                ))
                .response(
                    "200",
                    fhir_response("A subscription-notification Bundle", "Bundle"),
                );
            if with_id {
                b = b.parameter(path_param("id", "The Subscription's id"));
            }
            if id == "subscriptionEvents" {
                b = b
                    .parameter(query("eventsSinceNumber", "First event number"))
                    .parameter(query("eventsUntilNumber", "Last event number"))
                    .parameter(query("content", "empty, id-only or full-resource"));
            }
            if m == HttpMethod::Post {
                b = b.request_body(Some(fhir_body("Parameters", "Parameters", false)));
            }
            paths.add_path_operation(path, vec![m], with_errors(b).build());
        }
    }
}

/// The built-in authorization server (SMART App Launch 2 and Backend Services).
fn oauth(paths: &mut Paths) {
    let tag = "OAuth";
    let oauth_error = || {
        json_response(
            "An OAuth error (RFC 6749 section 5.2)",
            json!({"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "error_description": {"type": "string"}}}),
        )
    };
    paths.add_path_operation(
        "/fhir/.well-known/smart-configuration",
        vec![HttpMethod::Get],
        public(
            op("smartConfiguration", "SMART configuration", tag).response(
                "200",
                json_response(
                    "https://hl7.org/fhir/smart-app-launch/conformance.html",
                    json!({"type": "object", "required": ["token_endpoint", "capabilities"]}),
                ),
            ),
        ),
    );
    paths.add_path_operation(
        "/.well-known/openid-configuration",
        vec![HttpMethod::Get],
        public(
            op("openidConfiguration", "OpenID Connect discovery", tag).response(
                "200",
                json_response(
                    "https://openid.net/specs/openid-connect-discovery-1_0.html",
                    json!({"type": "object", "required": ["issuer", "jwks_uri"]}),
                ),
            ),
        ),
    );
    paths.add_path_operation(
        "/auth/jwks",
        vec![HttpMethod::Get],
        public(op("jwks", "The issuer's public keys", tag).response(
            "200",
            json_response(
                "A JWK Set (RFC 7517)",
                json!({"type": "object", "required": ["keys"]}),
            ),
        )),
    );
    paths.add_path_operation(
        "/auth/token",
        vec![HttpMethod::Post],
        public(
            op("token", "Issue an access token", tag)
                .description(Some(
                    "client_credentials (HTTP Basic client secret, or `private_key_jwt` per \
                     SMART Backend Services), authorization_code with PKCE, refresh_token. \
                     Answers carry Cache-Control: no-store.",
                ))
                .request_body(Some(form_body(
                    "The grant",
                    &[
                        ("grant_type", "client_credentials, authorization_code or refresh_token"),
                        ("scope", "Space-separated SMART scopes"),
                        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                        ("client_assertion", "A signed JWT (RS384 or ES384)"),
                        ("code", "The authorization code"),
                        ("redirect_uri", "The redirect URI the code was issued for"),
                        ("code_verifier", "The PKCE verifier"),
                        ("refresh_token", "A refresh token"),
                        ("client_id", "A public client's id"),
                    ],
                    &["grant_type"],
                )))
                .response(
                    "200",
                    json_response(
                        "The token (RFC 6749 section 5.1)",
                        json!({"type": "object", "required": ["access_token", "token_type", "expires_in"],
                            "properties": {
                                "access_token": {"type": "string"},
                                "token_type": {"type": "string", "enum": ["Bearer"]},
                                "expires_in": {"type": "integer"},
                                "scope": {"type": "string"},
                                "refresh_token": {"type": "string"},
                                "id_token": {"type": "string"},
                                "patient": {"type": "string"}}}),
                    ),
                )
                .response("400", oauth_error())
                .response("401", oauth_error()),
        ),
    );
    let html = || {
        ResponseBuilder::new()
            .description("An HTML page (sign-in, patient picker)")
            .content(
                "text/html",
                Content::new(Some(from_json(json!({"type": "string"})))),
            )
            .build()
    };
    let mut authorize = op("authorize", "Start the authorization code flow", tag)
        .description(Some(
            "https://hl7.org/fhir/smart-app-launch/app-launch.html: the sign-in page, then a \
             redirect to the app with a code",
        ))
        .response("200", html())
        .response("302", empty_response("Redirect to the app's redirect URI"))
        .response("400", html());
    for (n, d) in [
        ("response_type", "code"),
        ("client_id", "The app"),
        ("redirect_uri", "One of the app's registered redirect URIs"),
        ("scope", "SMART scopes"),
        ("state", "Opaque value returned to the app"),
        ("aud", "The FHIR base URL"),
        ("code_challenge", "PKCE challenge"),
        ("code_challenge_method", "S256"),
        ("launch", "An EHR launch context"),
    ] {
        authorize = authorize.parameter(query(n, d));
    }
    paths.add_path_operation("/auth/authorize", vec![HttpMethod::Get], public(authorize));
    paths.add_path_operation(
        "/auth/authorize",
        vec![HttpMethod::Post],
        public(
            op("authorizeAnswer", "Sign in, or pick a patient", tag)
                .request_body(Some(form_body(
                    "The login form or the patient picker",
                    &[
                        ("username", ""),
                        ("password", ""),
                        ("request", "The signed request"),
                    ],
                    &[],
                )))
                .response("200", html())
                .response("302", empty_response("Redirect to the app"))
                .response("400", html())
                .response("401", html())
                .response("429", html()),
        ),
    );
    paths.add_path_operation(
        "/auth/launch",
        vec![HttpMethod::Post],
        op("launch", "Create an EHR launch context", tag)
            .request_body(Some(json_body(
                "The context",
                json!({"type": "object", "properties": {"patient": {"type": "string"}}}),
            )))
            .response(
                "200",
                json_response(
                    "The launch id",
                    json!({"type": "object", "required": ["launch"]}),
                ),
            )
            .response("default", fhir_response("An error", "OperationOutcome"))
            .build(),
    );
    paths.add_path_operation(
        "/auth/federated/start",
        vec![HttpMethod::Post],
        public(
            op(
                "federatedStart",
                "Sign in at an external OpenID provider",
                tag,
            )
            .request_body(Some(form_body(
                "Which provider, and the pending request",
                &[
                    ("issuer", "The provider"),
                    ("request", "The signed request"),
                ],
                &[],
            )))
            .response("302", empty_response("Redirect to the provider"))
            .response("400", html()),
        ),
    );
    paths.add_path_operation(
        "/auth/federated/callback",
        vec![HttpMethod::Get],
        public(
            op(
                "federatedCallback",
                "The external provider's redirect back",
                tag,
            )
            .parameter(query("code", "The provider's code"))
            .parameter(query("state", "The signed state"))
            .response("302", empty_response("Redirect to the app"))
            .response("400", html()),
        ),
    );
    for (path, id, summary) in [
        (
            "/auth/introspect",
            "introspect",
            "Token introspection (RFC 7662)",
        ),
        ("/auth/revoke", "revoke", "Token revocation (RFC 7009)"),
    ] {
        paths.add_path_operation(
            path,
            vec![HttpMethod::Post],
            op(id, summary, tag)
                .description(Some("The client authenticates with HTTP Basic"))
                .securities(Some([SecurityRequirement::new::<_, _, &str>(
                    CLIENT_BASIC,
                    [],
                )]))
                .request_body(Some(form_body(
                    "The token",
                    &[
                        ("token", "The token"),
                        ("token_type_hint", "access_token or refresh_token"),
                    ],
                    &["token"],
                )))
                .response(
                    "200",
                    json_response("The answer", json!({"type": "object"})),
                )
                .response("400", oauth_error())
                .response("401", oauth_error())
                .build(),
        );
    }
}

/// Clients and users, managed by admins (and distributors and customers for their own).
fn management(paths: &mut Paths) {
    let tag = "Management";
    let errors = |b: OperationBuilder| with_errors(b).build();
    paths.add_path_operation(
        "/auth/clients",
        vec![HttpMethod::Get],
        errors(
            op("listClients", "The clients the caller manages", tag).response(
                "200",
                json_response(
                    "The clients",
                    json!({"type": "object", "required": ["clients"], "properties": {"clients": {"type": "array", "items": schema_ref("ClientView")}}}),
                ),
            ),
        ),
    );
    paths.add_path_operation(
        "/auth/clients",
        vec![HttpMethod::Post],
        errors(
            op("createClient", "Register a client", tag)
                .request_body(Some(json_body("The client", schema_ref("NewClient"))))
                .response(
                    "201",
                    json_response(
                        "Registered; the secret is shown in this answer only",
                        json!({"allOf": [schema_ref("ClientView"),
                            {"type": "object", "properties": {"client_secret": {"type": "string"}}}]}),
                    ),
                ),
        ),
    );
    paths.add_path_operation(
        "/auth/clients/{client_id}",
        vec![HttpMethod::Delete],
        errors(
            op("deleteClient", "Remove a client", tag)
                .parameter(param(
                    "client_id",
                    ParameterIn::Path,
                    true,
                    "",
                    json!({"type": "string"}),
                ))
                .response("204", empty_response("Removed")),
        ),
    );
    paths.add_path_operation(
        "/auth/users",
        vec![HttpMethod::Get],
        errors(
            op("listUsers", "The users the caller manages", tag).response(
                "200",
                json_response(
                    "The users",
                    json!({"type": "object", "required": ["users"], "properties": {"users": {"type": "array", "items": schema_ref("UserView")}}}),
                ),
            ),
        ),
    );
    paths.add_path_operation(
        "/auth/users",
        vec![HttpMethod::Post],
        errors(
            op(
                "createUser",
                "Create a user (password hashed with argon2)",
                tag,
            )
            .request_body(Some(json_body("The user", schema_ref("NewUser"))))
            .response("201", json_response("Created", schema_ref("UserView"))),
        ),
    );
    paths.add_path_operation(
        "/auth/users/{username}",
        vec![HttpMethod::Delete],
        errors(
            op("deleteUser", "Remove a user", tag)
                .parameter(param(
                    "username",
                    ParameterIn::Path,
                    true,
                    "",
                    json!({"type": "string"}),
                ))
                .response("204", empty_response("Removed")),
        ),
    );
}

/// The three ways readings come in (DESIGN.md "Three ways in").
fn ingestion(paths: &mut Paths) {
    let tag = "Ingestion";
    let errors = |b: OperationBuilder| with_errors(b).build();
    let answer = || json_response("What became of each reading", schema_ref("IngestAnswer"));
    paths.add_path_operation(
        "/ingest/hub",
        vec![HttpMethod::Post],
        errors(
            op(
                "ingestHub",
                "A hub's or gateway's batch of raw GATT values",
                tag,
            )
            .description(Some(
                "Authenticated as a client of role `hub`, registered as an active Device of \
                     its organization. Up to 500 readings; the rest are rejected, to be sent \
                     again. Every message is kept raw with its SHA-256.",
            ))
            .request_body(Some(json_body("The batch", schema_ref("HubBatch"))))
            .response("200", answer()),
        ),
    );
    paths.add_path_operation(
        "/ingest/messages",
        vec![HttpMethod::Get],
        errors(
            op("ingestMessages", "Kept raw messages, newest first", tag)
                .parameter(query("sha256", "One message by its SHA-256"))
                .parameter(param(
                    "count",
                    ParameterIn::Query,
                    false,
                    "How many",
                    json!({"type": "integer", "minimum": 1}),
                ))
                .response(
                    "200",
                    json_response(
                        "The messages",
                        json!({"type": "object", "required": ["messages"], "properties": {"messages": {"type": "array", "items": {"type": "object"}}}}),
                    ),
                ),
        ),
    );
    paths.add_path_operation(
        "/ingest/vendors",
        vec![HttpMethod::Post],
        errors(
            op(
                "registerVendor",
                "Register a cellular vendor integration",
                tag,
            )
            .request_body(Some(json_body(
                "The integration",
                schema_ref("NewIntegration"),
            )))
            .response(
                "201",
                json_response(
                    "Registered; its secret is shown in this answer only",
                    json!({"type": "object"}),
                ),
            ),
        ),
    );
    let vendors: Vec<&str> = crate::ingest::cellular::VENDORS
        .iter()
        .map(|(v, _)| *v)
        .collect();
    paths.add_path_operation(
        "/ingest/cellular/{vendor}",
        vec![HttpMethod::Post],
        public(with_errors(
            op("ingestCellular", "A cellular vendor's webhook", tag)
                .description(Some(
                    "Authenticated by the integration's secret (header, HTTP Basic or HMAC \
                         signature, per vendor), not by a bearer token",
                ))
                .parameter(param(
                    "vendor",
                    ParameterIn::Path,
                    true,
                    "",
                    json!({"type": "string", "enum": vendors}),
                ))
                .request_body(Some(json_body(
                    "The vendor's payload",
                    json!({"type": "object"}),
                )))
                .response("200", answer()),
        )),
    );
}

/// For operation ids: `Get`, `Post`, …
fn method_name(m: &HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "Get",
        HttpMethod::Post => "Post",
        HttpMethod::Put => "Put",
        HttpMethod::Delete => "Delete",
        HttpMethod::Options => "Options",
        HttpMethod::Head => "Head",
        HttpMethod::Patch => "Patch",
        HttpMethod::Trace => "Trace",
    }
}

fn json_patch_schema() -> Value {
    // RFC 6902
    json!({"type": "array", "items": {"type": "object", "required": ["op", "path"], "properties": {
        "op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
        "path": {"type": "string"}, "from": {"type": "string"}, "value": {}}}})
}

/// Schemas of the Rust types behind the non-FHIR routes, derived by utoipa.
fn rust_schemas() -> Vec<(String, RefOr<Schema>)> {
    use utoipa::{PartialSchema, ToSchema};
    let mut out = Vec::new();
    let mut add = |name: std::borrow::Cow<'static, str>, s: RefOr<Schema>| {
        out.push((name.into_owned(), s));
    };
    add(
        crate::auth::clients::NewClient::name(),
        crate::auth::clients::NewClient::schema(),
    );
    add(
        crate::auth::clients::ClientView::name(),
        crate::auth::clients::ClientView::schema(),
    );
    add(
        crate::auth::users::NewUser::name(),
        crate::auth::users::NewUser::schema(),
    );
    add(
        crate::auth::users::UserView::name(),
        crate::auth::users::UserView::schema(),
    );
    add(crate::auth::Role::name(), crate::auth::Role::schema());
    add("HubBatch".into(), crate::ingest::hub::HubBatch::schema());
    add(
        crate::ingest::hub::HubReading::name(),
        crate::ingest::hub::HubReading::schema(),
    );
    add(
        crate::ingest::cellular::NewIntegration::name(),
        crate::ingest::cellular::NewIntegration::schema(),
    );
    add(
        "IngestAnswer".into(),
        crate::ingest::pipeline::IngestAnswer::schema(),
    );
    add(
        crate::ingest::pipeline::ReadingResult::name(),
        crate::ingest::pipeline::ReadingResult::schema(),
    );
    add(
        crate::ingest::pipeline::Status::name(),
        crate::ingest::pipeline::Status::schema(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed document is the one the code makes (`vitalbridge openapi >
    /// openapi/openapi.json` after a change to the routes).
    #[test]
    fn document_matches_the_committed_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let now = document_text();
        if committed != now {
            let line = committed
                .lines()
                .zip(now.lines())
                .position(|(a, b)| a != b)
                .map_or(committed.lines().count().min(now.lines().count()), |i| i);
            panic!(
                "openapi/openapi.json differs from the code from line {} on; run \
                 `cargo run -- openapi > openapi/openapi.json`",
                line + 1
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(document()).expect("serialises");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = doc.to_string();
        for r in text.split("#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap_or_default();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but missing"
            );
        }
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().into_iter().flat_map(|o| o.values()))
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "operation ids are unique");
        assert!(ids.len() > 200, "{} operations", ids.len());
        let read = &doc["paths"]["/fhir/Observation/{id}"]["get"];
        assert_eq!(
            read["responses"]["200"]["content"][FHIR_JSON]["schema"]["$ref"],
            "#/components/schemas/Observation"
        );
        assert_eq!(
            doc["paths"]["/fhir/metadata"]["get"]["security"],
            json!([]),
            "public"
        );
        assert!(read.get("security").is_none(), "the document's: a token");
    }

    #[test]
    fn formats_are_the_capability_statements() {
        use crate::fhir::capability::FORMATS;
        assert!(FORMATS.contains(&FHIR_JSON) && FORMATS.contains(&FHIR_XML));
    }
}

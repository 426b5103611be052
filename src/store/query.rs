//! Search criteria as the store answers them, and their translation into SQL over the index
//! tables of `0002_search.sql` (https://hl7.org/fhir/R4/search.html).
//!
//! The `search` room parses a query string into [`Clause`]s; this module turns them into one
//! SQL text with `$n` placeholders and a list of [`Bind`] values. The text is the same for
//! PostgreSQL and SQLite (both accept `$n`, row values, `nulls last` and window functions), so
//! the backends cannot answer differently.
//!
//! Every clause becomes `alias.res_id in (select res_id from <index table> where res_type = ...
//! and param = ... and (<value> or <value> ...))`: the index holds only current, undeleted
//! versions, and an uncorrelated `IN` lets either planner start from the most selective clause.

use std::fmt::Write as _;

/// A search prefix (https://hl7.org/fhir/R4/search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    pub fn parse(s: &str) -> Option<Prefix> {
        Some(match s {
            "eq" => Prefix::Eq,
            "ne" => Prefix::Ne,
            "gt" => Prefix::Gt,
            "lt" => Prefix::Lt,
            "ge" => Prefix::Ge,
            "le" => Prefix::Le,
            "sa" => Prefix::Sa,
            "eb" => Prefix::Eb,
            "ap" => Prefix::Ap,
            _ => return None,
        })
    }
}

/// Which index table a clause reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
    Composite,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Token => "search_token",
            Table::String => "search_string",
            Table::Date => "search_date",
            Table::Reference => "search_reference",
            Table::Quantity => "search_quantity",
            Table::Number => "search_number",
            Table::Uri => "search_uri",
            Table::Composite => "search_composite",
        }
    }
}

/// A decimal search value with the range its precision implies
/// (https://hl7.org/fhir/R4/search.html#number: `100` means [99.5, 100.5)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num {
    pub prefix: Prefix,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// A date search value: the inclusive range of microseconds it covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DateRange {
    pub prefix: Prefix,
    pub lo: i64,
    pub hi: i64,
}

/// A token match: `system` `None` = any system, `Some(None)` = no system (`|code`),
/// `Some(Some(s))` = that system; `code` `None` = any code (`system|`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMatch {
    pub system: Option<Option<String>>,
    pub code: Option<String>,
}

/// One alternative of a clause (values separated by commas are ORed).
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    Token(TokenMatch),
    /// Normalised text starts with (string default, token `:text`).
    Prefix {
        column: &'static str,
        value: String,
    },
    /// Normalised text contains (`:contains`).
    Contains {
        column: &'static str,
        value: String,
    },
    /// Exact text (`:exact`, uri, reference url).
    Equals {
        column: &'static str,
        value: String,
    },
    /// Stored uri is below (starts with) the value.
    UriBelow(String),
    /// Stored uri is above (a prefix of) the value.
    UriAbove(String),
    /// Token `:below` / `:above`: the code and what it subsumes (or what subsumes it) in a
    /// CodeSystem stored here. The engine replaces it by [`Pred::Token`]s before the SQL is
    /// built (`search::terminology`); unreplaced, it matches nothing.
    Subsumption {
        system: String,
        code: String,
        below: bool,
    },
    /// Token `:in` / `:not-in`: a member of the ValueSet with this url (or `ValueSet/id`),
    /// replaced like [`Pred::Subsumption`].
    InValueSet(String),
    Date(DateRange),
    Number(Num),
    /// Quantity: on the canonical UCUM value when `canonical` is set, otherwise on the value
    /// as given with an optional system and code.
    Quantity {
        num: Num,
        system: Option<String>,
        code: Option<String>,
        canonical: Option<(Num, String)>,
    },
    /// A literal reference: target type (if known) and id, on this server: stored relative,
    /// or absolute under `base` (the request's FHIR base URL).
    Reference {
        target_type: Option<String>,
        id: String,
        base: String,
    },
    /// A composite value: a token (or `Type/id`) and the second component.
    Composite {
        first: TokenMatch,
        second: Box<Pred>,
    },
}

/// A selection criterion on resources of one type; clauses of a search are ANDed.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// `_id`: any of these ids.
    Id { ids: Vec<String>, negate: bool },
    /// `_lastUpdated`: any of these ranges.
    LastUpdated(Vec<DateRange>),
    /// Index rows of `param` in `table` matching any of `any_of`; with `negate`, resources
    /// with no such row (`:not`, `ne`).
    Values {
        table: Table,
        param: String,
        any_of: Vec<Pred>,
        negate: bool,
    },
    /// `:missing`: resources with (`missing = false`) or without any row for `param`.
    Missing {
        table: Table,
        param: String,
        missing: bool,
    },
    /// Chaining (search.html#chaining): `param` references a resource of one of these types that
    /// matches `inner`.
    Chain {
        param: String,
        targets: Vec<(String, Box<Clause>)>,
        base: String,
    },
    /// Reverse chaining `_has` (search.html#has): some `source_type` resource whose `param`
    /// references this one matches `inner`.
    Has {
        source_type: String,
        param: String,
        inner: Box<Clause>,
        base: String,
    },
    /// The resource `ty/id` itself and every resource that references it
    /// (`Patient/[id]/$everything`, https://hl7.org/fhir/R4/compartmentdefinition-patient.html:
    /// membership is approximated by any reference parameter pointing at the patient).
    Compartment { ty: String, id: String },
    /// A reference clause (`Values` on the reference table) whose resources must also have a
    /// `date` matching `within`: the rows' date envelope narrows the index range first (the
    /// exact date clause stays in the search too).
    Dated {
        reference: Box<Clause>,
        within: DateRange,
    },
    /// Any of these (a parameter answered from two others, e.g. Observation `combo-code`).
    Any(Vec<Clause>),
    /// All of these.
    All(Vec<Clause>),
    /// Matches nothing (e.g. a reference to a type the parameter cannot point to).
    Nothing,
    /// Per resource type: the clause of the type searched; a type not listed is not narrowed
    /// (the narrowing scopes of `auth::policy`, which differ by type in a system search).
    ByType(Vec<(String, Clause)>),
    /// Resources owned by one of these organizations (the caller's tenancy,
    /// `auth::tenancy`): an Organization by its id, definitions always, anything else by its
    /// owner tag.
    Owned { orgs: Vec<String> },
}

/// A sort key (`_sort`): a parameter's table and code, or `_id` / `_lastUpdated`.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Id {
        desc: bool,
    },
    LastUpdated {
        desc: bool,
    },
    Param {
        table: Table,
        param: String,
        desc: bool,
    },
}

/// What a sort key's values are, to read them back for a paging cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Text,
    Int,
    Float,
}

impl SortKey {
    pub fn desc(&self) -> bool {
        match self {
            SortKey::Id { desc } | SortKey::LastUpdated { desc } | SortKey::Param { desc, .. } => {
                *desc
            }
        }
    }

    /// The kind of the values [`push_sort_expr`] gives for this key.
    pub fn kind(&self) -> KeyKind {
        match self {
            SortKey::Id { .. } => KeyKind::Text,
            SortKey::LastUpdated { .. } => KeyKind::Int,
            SortKey::Param { table, .. } => match table {
                Table::Date => KeyKind::Int,
                Table::Quantity | Table::Number => KeyKind::Float,
                Table::Token | Table::String | Table::Reference | Table::Uri | Table::Composite => {
                    KeyKind::Text
                }
            },
        }
    }

    /// True when `value` (from a cursor) can be a value of this key.
    pub fn admits(&self, value: &Option<Bind>) -> bool {
        matches!(
            (self.kind(), value),
            (_, None)
                | (KeyKind::Text, Some(Bind::Text(_)))
                | (KeyKind::Int, Some(Bind::Int(_)))
                | (KeyKind::Float, Some(Bind::Float(_)))
        )
    }
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
}

/// SQL text with `$n` placeholders and the values they stand for.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
    /// The plan cannot depend on the bound values (a [`driver`] index range with per-row
    /// probes), so the statement may be prepared once and planned generically.
    pub generic: bool,
}

impl Sql {
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    pub fn bind(&mut self, b: Bind) -> &mut Self {
        self.binds.push(b);
        let _ = write!(self.text, "${}", self.binds.len());
        self
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.bind(Bind::Text(s.to_owned()))
    }

    /// Appends another statement part, renumbering its placeholders after this one's.
    pub fn append(&mut self, other: Sql) -> &mut Self {
        let shift = self.binds.len();
        let mut rest = other.text.as_str();
        while let Some(i) = rest.find('$') {
            self.text.push_str(&rest[..i]);
            let digits = rest[i + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - i - 1, |n| n);
            match rest[i + 1..i + 1 + digits].parse::<usize>() {
                Ok(n) => {
                    let _ = write!(self.text, "${}", n + shift);
                }
                Err(_) => self.text.push('$'),
            }
            rest = &rest[i + 1 + digits..];
        }
        self.text.push_str(rest);
        self.binds.extend(other.binds);
        self
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.bind(Bind::Int(v))
    }

    fn float(&mut self, v: f64) -> &mut Self {
        self.bind(Bind::Float(v))
    }
}

/// The largest code point: `p || MAX_CHAR` is above every string starting with `p` in a
/// bytewise (UTF-8) comparison.
const MAX_CHAR: char = '\u{10FFFF}';

/// Escapes LIKE wildcards (with `\` as the escape character).
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// On `search_reference`: one row per reference, leaving out the `subject` rows that repeat it
/// for each code of the resource (0007_reference_any_code.sql). Those are read only where a
/// search narrows them to codes; every other search reads one row per reference, and the
/// lookup index range of a patient is then its readings in date order, whatever their codes.
/// Both columns, so that the index range goes on to `date_hi` (`IS NULL` positions a btree scan
/// like an equality).
const ANY_CODE: &str = " and code is null and code_system is null";

/// `url` of a `search_reference` row names a resource of this server: stored relative, or
/// absolute under `base` (the request's FHIR base URL).
fn push_local(sql: &mut Sql, base: &str) {
    sql.push("(url not like '%://%' or url like ");
    sql.text(&format!("{}/%", like_escape(base.trim_end_matches('/'))))
        .push(" escape '\\')");
}

/// Appends `alias.res_id in (select ...)` (or `not in`) for `clause` on resources of `ty`.
pub fn push_clause(sql: &mut Sql, alias: &str, ty: &str, clause: &Clause) {
    match clause {
        Clause::Nothing => {
            sql.push("1 = 0");
        }
        Clause::Any(list) | Clause::All(list) => {
            let (op, empty) = match clause {
                Clause::Any(_) => (" or ", "1 = 0"),
                _ => (" and ", "1 = 1"),
            };
            sql.push("(");
            if list.is_empty() {
                sql.push(empty);
            }
            for (i, c) in list.iter().enumerate() {
                if i > 0 {
                    sql.push(op);
                }
                push_clause(sql, alias, ty, c);
            }
            sql.push(")");
        }
        Clause::Owned { orgs } => push_owned(sql, alias, ty, orgs),
        Clause::ByType(list) => match list.iter().find(|(t, _)| t == ty) {
            Some((_, c)) => push_clause(sql, alias, ty, c),
            None => {
                sql.push("1 = 1");
            }
        },
        Clause::Compartment { ty: cty, id } => {
            sql.push("((").push(alias).push(".res_type = ");
            sql.text(cty).push(" and ").push(alias).push(".res_id = ");
            sql.text(id).push(") or ").push(alias);
            sql.push(".res_id in (select res_id from search_reference where res_type = ");
            sql.text(ty).push(ANY_CODE).push(" and target_type = ");
            sql.text(cty).push(" and target_id = ");
            sql.text(id).push("))");
        }
        Clause::Id { ids, negate } => {
            if ids.is_empty() {
                sql.push(if *negate { "1 = 1" } else { "1 = 0" });
                return;
            }
            sql.push(alias).push(if *negate {
                ".res_id not in ("
            } else {
                ".res_id in ("
            });
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text(id);
            }
            sql.push(")");
        }
        Clause::LastUpdated(ranges) => {
            // Through the history's (type, time) index: a current version's row there has the
            // resource's last_updated, and `resource` itself keeps no time index, so that a
            // write does not update one more index (and an update of `resource` can be HOT).
            let _ = write!(
                sql.text,
                "({alias}.res_type, {alias}.res_id, {alias}.version_id) in (select res_type, \
                 res_id, version_id from resource_history where res_type = "
            );
            sql.text(ty).push(" and (");
            for (i, r) in ranges.iter().enumerate() {
                if i > 0 {
                    sql.push(" or ");
                }
                push_date(sql, "last_updated", "last_updated", r);
            }
            sql.push("))");
        }
        Clause::Values { .. } => push_values(sql, alias, ty, clause, None),
        Clause::Dated { reference, within } => push_values(sql, alias, ty, reference, Some(within)),
        Clause::Missing {
            table,
            param,
            missing,
        } => {
            sql.push(alias)
                .push(if *missing {
                    ".res_id not in ("
                } else {
                    ".res_id in ("
                })
                .push("select res_id from ")
                .push(table.name())
                .push(" where res_type = ");
            sql.text(ty).push(" and param = ");
            sql.text(param).push(")");
        }
        Clause::Chain {
            param,
            targets,
            base,
        } => {
            sql.push(alias)
                .push(".res_id in (select res_id from search_reference where res_type = ");
            sql.text(ty).push(" and param = ");
            sql.text(param).push(ANY_CODE).push(" and ");
            push_local(sql, base);
            sql.push(" and (");
            if targets.is_empty() {
                sql.push("1 = 0");
            }
            for (i, (target, inner)) in targets.iter().enumerate() {
                if i > 0 {
                    sql.push(" or ");
                }
                sql.push("(target_type = ");
                sql.text(target)
                    .push(" and target_id in (select c.res_id from resource c where c.res_type = ");
                sql.text(target).push(" and c.deleted = false and ");
                push_clause(sql, "c", target, inner);
                sql.push("))");
            }
            sql.push("))");
        }
        Clause::Has {
            source_type,
            param,
            inner,
            base,
        } => {
            sql.push(alias)
                .push(".res_id in (select target_id from search_reference where res_type = ");
            sql.text(source_type).push(" and param = ");
            sql.text(param).push(ANY_CODE).push(" and ");
            push_local(sql, base);
            sql.push(" and target_type = ");
            sql.text(ty)
                .push(" and res_id in (select s.res_id from resource s where s.res_type = ");
            sql.text(source_type).push(" and s.deleted = false and ");
            push_clause(sql, "s", source_type, inner);
            sql.push("))");
        }
    }
}

/// [`Clause::Owned`]: a correlated probe of the resource's own `_tag` rows, so that a search
/// driven by another index checks only its candidates.
fn push_owned(sql: &mut Sql, alias: &str, ty: &str, orgs: &[String]) {
    use crate::auth::tenancy::{Area, OWNER_SYSTEM, area};
    match area(ty) {
        Area::Shared => {
            sql.push("1 = 1");
        }
        _ if orgs.is_empty() => {
            sql.push("1 = 0");
        }
        Area::Organization => {
            sql.push(alias).push(".res_id in (");
            push_list(sql, orgs);
        }
        _ => {
            sql.push("exists (select 1 from search_token o where o.res_type = ");
            sql.text(ty).push(" and o.res_id = ").push(alias);
            sql.push(".res_id and o.param = '_tag' and o.system = ");
            sql.text(OWNER_SYSTEM).push(" and o.code in (");
            push_list(sql, orgs);
            sql.push(")");
        }
    }
}

/// A `Values` clause; `within` adds the date envelope condition of [`Clause::Dated`].
fn push_values(sql: &mut Sql, alias: &str, ty: &str, clause: &Clause, within: Option<&DateRange>) {
    let Clause::Values { negate, .. } = clause else {
        push_clause(sql, alias, ty, clause);
        return;
    };
    sql.push(alias).push(if *negate {
        ".res_id not in ("
    } else {
        ".res_id in ("
    });
    push_values_select(sql, ty, clause, within);
    sql.push(")");
}

/// `select res_id from <table> where …` of a `Values` clause (ignoring `negate`).
fn push_values_select(sql: &mut Sql, ty: &str, clause: &Clause, within: Option<&DateRange>) {
    push_values_query(sql, "res_id", ty, clause, within, None, false);
}

/// `select <what> from <table> where …` of a `Values` clause; with `owner`, only the rows of
/// the resource `owner.res_id` (a correlated probe of the table's owner index). Reference rows
/// are the ones without a code ([`ANY_CODE`]) unless `code_rows`: then the caller narrows the
/// per-code `subject` rows itself.
fn push_values_query(
    sql: &mut Sql,
    what: &str,
    ty: &str,
    clause: &Clause,
    within: Option<&DateRange>,
    owner: Option<&str>,
    code_rows: bool,
) {
    let Clause::Values {
        table,
        param,
        any_of,
        ..
    } = clause
    else {
        sql.push("select null where 1 = 0");
        return;
    };
    sql.push("select ")
        .push(what)
        .push(" from ")
        .push(table.name())
        .push(" where res_type = ");
    sql.text(ty);
    if let Some(alias) = owner {
        sql.push(" and res_id = ").push(alias).push(".res_id");
    }
    sql.push(" and param = ");
    sql.text(param);
    if *table == Table::Reference && !code_rows {
        sql.push(ANY_CODE);
    }
    sql.push(" and (");
    if any_of.is_empty() {
        sql.push("1 = 0");
    }
    for (i, p) in any_of.iter().enumerate() {
        if i > 0 {
            sql.push(" or ");
        }
        sql.push("(");
        push_pred(sql, p);
        sql.push(")");
    }
    sql.push(")");
    if let Some(r) = within {
        push_envelope(sql, r);
    }
}

/// A condition every resource with a `date` value matching `r` meets, on the envelope
/// [date_lo, date_hi] of all its values (see `search_reference` in `0002_search.sql`).
fn push_envelope(sql: &mut Sql, r: &DateRange) {
    match r.prefix {
        Prefix::Eq => {
            sql.push(" and date_hi >= ");
            sql.int(r.lo).push(" and date_lo <= ");
            sql.int(r.hi);
        }
        Prefix::Ge => {
            sql.push(" and date_hi >= ");
            sql.int(r.lo);
        }
        Prefix::Gt | Prefix::Sa => {
            sql.push(" and date_hi > ");
            sql.int(r.hi);
        }
        Prefix::Le => {
            sql.push(" and date_lo <= ");
            sql.int(r.hi);
        }
        Prefix::Lt | Prefix::Eb => {
            sql.push(" and date_lo < ");
            sql.int(r.lo);
        }
        Prefix::Ne | Prefix::Ap => {}
    }
}

/// Turns reference clauses into [`Clause::Dated`] ones when the search also has a single
/// `date` criterion, so the reference index range is narrowed by date.
pub fn with_date_envelopes(clauses: &[Clause]) -> Vec<Clause> {
    let dates: Vec<DateRange> = clauses
        .iter()
        .filter_map(|c| match c {
            Clause::Values {
                table: Table::Date,
                param,
                any_of,
                negate: false,
            } if param == "date" && any_of.len() == 1 => match &any_of[0] {
                Pred::Date(r) => Some(*r),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let Some(within) = dates.first().copied() else {
        return clauses.to_vec();
    };
    clauses
        .iter()
        .map(|c| match c {
            Clause::Values {
                table: Table::Reference,
                negate: false,
                any_of,
                ..
            } if any_of.iter().all(|p| matches!(p, Pred::Reference { .. })) => Clause::Dated {
                reference: Box::new(c.clone()),
                within,
            },
            other => other.clone(),
        })
        .collect()
}

fn push_token(sql: &mut Sql, system_col: &str, code_col: &str, t: &TokenMatch) {
    let mut any = false;
    if let Some(code) = &t.code {
        sql.push(code_col).push(" = ");
        sql.text(code);
        any = true;
    }
    match &t.system {
        None => {}
        Some(None) => {
            if any {
                sql.push(" and ");
            }
            sql.push(system_col).push(" is null");
            any = true;
        }
        Some(Some(s)) => {
            if any {
                sql.push(" and ");
            }
            sql.push(system_col).push(" = ");
            sql.text(s);
            any = true;
        }
    }
    if !any {
        sql.push("1 = 1");
    }
}

fn push_pred(sql: &mut Sql, p: &Pred) {
    match p {
        Pred::Token(t) => push_token(sql, "system", "code", t),
        Pred::Prefix { column, value } => {
            sql.push(column).push(" >= ");
            sql.text(value).push(" and ").push(column).push(" < ");
            sql.text(&format!("{value}{MAX_CHAR}"));
        }
        Pred::Contains { column, value } => {
            sql.push(column).push(" like ");
            sql.text(&format!("%{}%", like_escape(value)))
                .push(" escape '\\'");
        }
        Pred::Equals { column, value } => {
            sql.push(column).push(" = ");
            sql.text(value);
        }
        Pred::UriBelow(v) => {
            sql.push("value >= ");
            sql.text(v).push(" and value < ");
            sql.text(&format!("{v}{MAX_CHAR}"));
        }
        Pred::Subsumption { .. } | Pred::InValueSet(_) => {
            sql.push("1 = 0");
        }
        Pred::UriAbove(v) => {
            sql.push("substr(");
            sql.text(v).push(", 1, length(value)) = value");
        }
        Pred::Date(r) => push_date(sql, "lo", "hi", r),
        Pred::Number(n) => push_num(sql, "value", n),
        Pred::Quantity {
            num,
            system,
            code,
            canonical,
        } => {
            // In canonical UCUM units when both sides convert; a stored value whose unit does
            // not convert is still compared as written.
            if let Some((cnum, ccode)) = canonical {
                sql.push("(ccode = ");
                sql.text(ccode).push(" and ");
                push_num(sql, "cvalue", cnum);
                sql.push(") or (ccode is null and ");
            }
            if let Some(s) = system {
                sql.push("system = ");
                sql.text(s).push(" and ");
            }
            if let Some(c) = code {
                sql.push("code = ");
                sql.text(c).push(" and ");
            }
            push_num(sql, "value", num);
            if canonical.is_some() {
                sql.push(")");
            }
        }
        Pred::Reference {
            target_type,
            id,
            base,
        } => {
            sql.push("target_id = ");
            sql.text(id);
            if let Some(t) = target_type {
                sql.push(" and target_type = ");
                sql.text(t);
            }
            // An absolute reference to another server is not this server's resource.
            sql.push(" and ");
            push_local(sql, base);
        }
        Pred::Composite { first, second } => {
            push_token(sql, "c1_system", "c1_code", first);
            sql.push(" and ");
            match second.as_ref() {
                Pred::Token(t) => push_token(sql, "c2_system", "c2_code", t),
                Pred::Prefix { value, .. } => push_pred(
                    sql,
                    &Pred::Prefix {
                        column: "c2_code",
                        value: value.clone(),
                    },
                ),
                Pred::Date(r) => {
                    // Composite dates are stored as doubles (exact below 2^53 microseconds).
                    sql.push("c2_lo is not null and ");
                    push_date(sql, "c2_lo", "c2_hi", r)
                }
                Pred::Number(n) => push_num(sql, "c2_lo", n),
                Pred::Quantity {
                    num,
                    system,
                    code,
                    canonical,
                } => match canonical {
                    Some((cnum, ccode)) => {
                        sql.push("c2_ccode = ");
                        sql.text(ccode).push(" and ");
                        push_num(sql, "c2_cvalue", cnum);
                    }
                    None => {
                        if let Some(s) = system {
                            sql.push("c2_system = ");
                            sql.text(s).push(" and ");
                        }
                        if let Some(c) = code {
                            sql.push("c2_code = ");
                            sql.text(c).push(" and ");
                        }
                        push_num(sql, "c2_lo", num);
                    }
                },
                _ => {
                    sql.push("1 = 0");
                }
            }
        }
    }
}

/// Date prefixes over target ranges [lo, hi] (https://hl7.org/fhir/R4/search.html#prefix).
fn push_date(sql: &mut Sql, lo: &str, hi: &str, r: &DateRange) {
    // The target lies wholly inside the search range.
    let inside = |sql: &mut Sql| {
        sql.push("(").push(lo).push(" >= ");
        sql.int(r.lo).push(" and ").push(hi).push(" <= ");
        sql.int(r.hi).push(")");
    };
    match r.prefix {
        Prefix::Eq => inside(sql),
        Prefix::Ne => {
            sql.push("not ");
            inside(sql);
        }
        Prefix::Gt => {
            sql.push(hi).push(" > ");
            sql.int(r.hi);
        }
        Prefix::Lt => {
            sql.push(lo).push(" < ");
            sql.int(r.lo);
        }
        Prefix::Ge => {
            sql.push("(").push(hi).push(" > ");
            sql.int(r.hi).push(" or ");
            inside(sql);
            sql.push(")");
        }
        Prefix::Le => {
            sql.push("(").push(lo).push(" < ");
            sql.int(r.lo).push(" or ");
            inside(sql);
            sql.push(")");
        }
        Prefix::Sa => {
            sql.push(lo).push(" > ");
            sql.int(r.hi);
        }
        Prefix::Eb => {
            sql.push(hi).push(" < ");
            sql.int(r.lo);
        }
        Prefix::Ap => {
            // Approximately: within 10 % of the distance from now, at least a day either side.
            let now = super::now_micros();
            let gap = ((now - r.lo).abs() / 10).max(86_400_000_000);
            sql.push(lo).push(" <= ");
            sql.int(r.hi.saturating_add(gap))
                .push(" and ")
                .push(hi)
                .push(" >= ");
            sql.int(r.lo.saturating_sub(gap));
        }
    }
}

/// Number prefixes over a stored point value (https://hl7.org/fhir/R4/search.html#number).
fn push_num(sql: &mut Sql, col: &str, n: &Num) {
    match n.prefix {
        Prefix::Eq => {
            sql.push(col).push(" >= ");
            sql.float(n.lo).push(" and ").push(col).push(" < ");
            sql.float(n.hi);
        }
        Prefix::Ne => {
            sql.push("(").push(col).push(" < ");
            sql.float(n.lo).push(" or ").push(col).push(" >= ");
            sql.float(n.hi).push(")");
        }
        Prefix::Gt => {
            sql.push(col).push(" > ");
            sql.float(n.value);
        }
        Prefix::Lt => {
            sql.push(col).push(" < ");
            sql.float(n.value);
        }
        Prefix::Ge => {
            sql.push(col).push(" >= ");
            sql.float(n.value);
        }
        Prefix::Le => {
            sql.push(col).push(" <= ");
            sql.float(n.value);
        }
        Prefix::Sa => {
            sql.push(col).push(" >= ");
            sql.float(n.hi);
        }
        Prefix::Eb => {
            sql.push(col).push(" < ");
            sql.float(n.lo);
        }
        Prefix::Ap => {
            // Within 10 % of the value (search.html#prefix leaves the width to the server).
            let d = (n.value * 0.1).abs().max(n.hi - n.lo);
            sql.push(col).push(" >= ");
            sql.float(n.value - d).push(" and ").push(col).push(" <= ");
            sql.float(n.value + d);
        }
    }
}

/// The value a resource aliased `r` sorts by for `key`.
fn push_sort_expr(sql: &mut Sql, key: &SortKey) {
    match key {
        SortKey::Id { .. } => {
            sql.push("r.res_id");
        }
        SortKey::LastUpdated { .. } => {
            sql.push("r.last_updated");
        }
        SortKey::Param { table, param, desc } => {
            // Ascending sorts by the smallest value a resource has, descending by the largest
            // (search.html#sort).
            let agg = if *desc { "max" } else { "min" };
            let col = match table {
                Table::Token => "code",
                Table::String => "norm",
                Table::Date => {
                    if *desc {
                        "hi"
                    } else {
                        "lo"
                    }
                }
                Table::Reference => "url",
                Table::Quantity | Table::Number | Table::Uri => "value",
                Table::Composite => "c1_code",
            };
            let _ = write!(
                sql.text,
                "(select {agg}(x.{col}) from {} x where x.res_type = r.res_type and x.res_id = r.res_id and x.param = ",
                table.name()
            );
            sql.text(param).push(")");
        }
    }
}

/// Direction of a sort key; resources without a value sort last either way. `reverse` reads
/// the same order backwards (for a `previous` page).
fn sort_direction(key: &SortKey, reverse: bool) -> &'static str {
    match (key.desc(), reverse) {
        (false, false) => " asc nulls last",
        (true, false) => " desc nulls last",
        (false, true) => " desc nulls first",
        (true, true) => " asc nulls first",
    }
}

/// The rows of a sorted search past the cursor `c` in the search's order (before it, for a
/// `previous` link): the row aliased `alias` carries its sort values as `k0, k1, …`, compared
/// key by key as the ORDER BY does, nulls last, then by type and id. Written as nested
/// ORs rather than a row comparison because keys may run in different directions.
fn push_keyset(sql: &mut Sql, spec: &SearchSpec, c: &Cursor, alias: &str) {
    sql.push("(");
    for (i, (key, value)) in spec.sort.iter().zip(&c.keys).enumerate() {
        let k = format!("{alias}.k{i}");
        // Past the cursor's value in the direction the rows are read.
        let beyond_op = if key.desc() == c.before { " > " } else { " < " };
        match (value, c.before) {
            // Nothing is past the nulls going forward; going back, every value is.
            (None, false) => sql.push("(1 = 0"),
            (None, true) => sql.push("(").push(&k).push(" is not null"),
            (Some(v), false) => {
                sql.push("(").push(&k).push(beyond_op).bind(v.clone());
                sql.push(" or ").push(&k).push(" is null")
            }
            (Some(v), true) => sql.push("(").push(&k).push(beyond_op).bind(v.clone()),
        };
        sql.push(" or (");
        match value {
            None => sql.push(&k).push(" is null"),
            Some(v) => sql.push(&k).push(" = ").bind(v.clone()),
        };
        sql.push(" and ");
    }
    let _ = write!(
        sql.text,
        "({alias}.res_type, {alias}.res_id) {} (",
        if c.before { "<" } else { ">" }
    );
    sql.text(&c.ty).push(", ");
    sql.text(&c.id).push(")");
    for _ in &spec.sort {
        sql.push("))");
    }
    sql.push(")");
}

/// A keyset position in the default order (type, then id): the last (or, going back, the
/// first) resource of the page the link was made from. Ids never change, so updates, creates
/// and deletes between page requests neither skip nor repeat resources that were there before.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// True for a `previous` link: the page before this position.
    pub before: bool,
    pub ty: String,
    pub id: String,
    /// With `_sort`: the resource's sort values there, one per key (`None` for none). A
    /// sorted page goes on from these values rather than from a count of rows, so writes
    /// between page requests shift no resource onto a second page or off every page.
    pub keys: Vec<Option<Bind>>,
}

/// What a search asks of the store.
#[derive(Debug, Clone, Default)]
pub struct SearchSpec {
    /// One type for a type-level search; several (or all) for a system search.
    pub types: Vec<String>,
    /// ANDed.
    pub clauses: Vec<Clause>,
    /// Empty: by type and id, which keyset paging follows.
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub offset: usize,
    pub cursor: Option<Cursor>,
}

/// `from resource r where <types and clauses>`, shared by the count and the page.
pub fn push_filter(sql: &mut Sql, spec: &SearchSpec) {
    push_filter_join(sql, spec, "");
}

/// [`push_filter`] with `join` between the table and WHERE.
fn push_filter_join(sql: &mut Sql, spec: &SearchSpec, join: &str) {
    sql.push(" from resource r").push(join);
    sql.push(" where r.deleted = false and (");
    if spec.types.is_empty() {
        sql.push("1 = 0");
    }
    for (i, ty) in spec.types.iter().enumerate() {
        if i > 0 {
            sql.push(" or ");
        }
        sql.push("(r.res_type = ");
        sql.text(ty);
        for clause in &spec.clauses {
            sql.push(" and ");
            push_clause(sql, "r", ty, clause);
        }
        sql.push(")");
    }
    sql.push(")");
}

/// `select count(*)` of a search. With one type and a positive index clause, the count is
/// taken over that clause's index rows with the other clauses applied to them: the index holds
/// only current, undeleted versions, so `resource` need not be read row by row.
pub fn count_sql(spec: &SearchSpec) -> Sql {
    let mut sql = Sql::default();
    sql.push("select count(*)");
    let driver = spec
        .clauses
        .iter()
        .position(|c| {
            matches!(
                c,
                Clause::Values { negate: false, .. } | Clause::Dated { .. }
            )
        })
        .filter(|_| {
            spec.types.len() == 1
                && !spec
                    .clauses
                    .iter()
                    .any(|c| matches!(c, Clause::LastUpdated(_) | Clause::Compartment { .. }))
        });
    let Some(d) = driver else {
        push_filter(&mut sql, spec);
        return sql;
    };
    let ty = &spec.types[0];
    // One fully given token matches at most one row per resource (search::index keeps one row
    // per param, system and code), so its rows need no `distinct`.
    let unique = matches!(
        &spec.clauses[d],
        Clause::Values { table: Table::Token, any_of, .. }
            if any_of.len() == 1
                && matches!(&any_of[0], Pred::Token(TokenMatch { system: Some(_), code: Some(_) }))
    );
    sql.push(if unique {
        " from (select res_id from ("
    } else {
        " from (select distinct res_id from ("
    });
    match &spec.clauses[d] {
        Clause::Dated { reference, within } => {
            push_values_select(&mut sql, ty, reference, Some(within))
        }
        c => push_values_select(&mut sql, ty, c, None),
    }
    sql.push(") v) r where 1 = 1");
    for (i, clause) in spec.clauses.iter().enumerate() {
        if i != d {
            sql.push(" and ");
            push_clause(&mut sql, "r", ty, clause);
        }
    }
    sql
}

/// True when a clause picks few resources by identity (a reference to one resource, ids): the
/// page is then computed from the matches and sorted, rather than by walking the type's
/// resources in order until enough match, which the planner may choose when it underestimates
/// how many resources a patient has.
pub fn selective(spec: &SearchSpec) -> bool {
    spec.clauses.iter().any(|c| match c {
        Clause::Id { negate: false, .. } | Clause::Dated { .. } | Clause::Chain { .. } => true,
        Clause::Values {
            table: Table::Reference,
            negate: false,
            any_of,
            ..
        } => any_of.iter().all(|p| matches!(p, Pred::Reference { .. })),
        _ => false,
    })
}

/// The clause a [`selective`] search on one type is answered from, when it has one: an `_id`
/// list or a reference to one resource (optionally narrowed by its date envelope). The page is
/// then built from that clause's few index rows, each checked against the other clauses with a
/// correlated probe of their tables' owner index ([`push_probe`]): no `resource` rows are read
/// until the page is known, and the planner has a single-table scan to plan, not a join of
/// every clause's table (planning took longer than running before, see issue 3's notes).
pub fn driver(spec: &SearchSpec) -> Option<usize> {
    if spec.types.len() != 1
        || spec
            .clauses
            .iter()
            .any(|c| matches!(c, Clause::LastUpdated(_) | Clause::Compartment { .. }))
    {
        return None;
    }
    let rank = |c: &Clause| match c {
        Clause::Id { negate: false, .. } => Some(0),
        Clause::Dated { .. } => Some(1),
        Clause::Values {
            table: Table::Reference,
            negate: false,
            any_of,
            ..
        } if any_of.iter().all(|p| matches!(p, Pred::Reference { .. })) => Some(2),
        _ => None,
    };
    (0..spec.clauses.len())
        .filter_map(|i| rank(&spec.clauses[i]).map(|r| (r, i)))
        .min()
        .map(|(_, i)| i)
}

/// What the rows `s` of a reference [`driver`] carry that lets another clause be decided on
/// the row rather than probed (see [`push_other_probes`]).
#[derive(Debug, Clone, Copy, Default)]
struct OnRow {
    /// The [`exact_date_clause`]: `s` has `date_lo`, `date_hi` and `date_exact`.
    exact_date: Option<usize>,
    /// `s` has `categories` (0005_reference_carries.sql), for [`category_needles`] clauses.
    categories: bool,
}

impl OnRow {
    /// What the driver `d` should select for the other clauses of `spec`: nothing for an `_id`
    /// driver, whose rows come from `resource`, which carries neither.
    fn of(spec: &SearchSpec, d: usize) -> Self {
        if matches!(spec.clauses[d], Clause::Id { .. }) {
            return OnRow::default();
        }
        OnRow {
            exact_date: exact_date_clause(spec, d),
            categories: spec
                .clauses
                .iter()
                .enumerate()
                .any(|(i, c)| i != d && category_needles(c).is_some()),
        }
    }

    /// The columns after `res_id` that this needs, each with a leading comma.
    fn columns(self) -> &'static str {
        match (self.exact_date.is_some(), self.categories) {
            (true, true) => ", date_lo, date_hi, date_exact, categories",
            (true, false) => ", date_lo, date_hi, date_exact",
            (false, true) => ", categories",
            (false, false) => "",
        }
    }
}

/// `select res_id, version_id, … from …` of a [`driver`] clause, with the columns `on_row`
/// needs. `version_id` is null on reference rows written before 0005_reference_carries.sql.
fn push_driver_select(sql: &mut Sql, spec: &SearchSpec, d: usize, on_row: OnRow) {
    let ty = &spec.types[0];
    match &spec.clauses[d] {
        Clause::Id { ids, .. } => {
            sql.push("select distinct res_id, version_id from resource where res_type = ");
            sql.text(ty).push(" and deleted = false and res_id in (");
            push_list(sql, ids);
        }
        c => {
            let (values, within) = split_dated(c);
            let what = format!("distinct res_id, version_id{}", on_row.columns());
            let codes = code_range(spec, d);
            push_values_query(sql, &what, ty, values, within, None, codes.is_some());
            if let Some(codes) = codes {
                push_codes(sql, &codes);
            }
        }
    }
}

/// The substrings of a reference row's `categories` of which one must be present for `clause`
/// to hold, when it is a plain `category` token search ([`crate::search::index::category_needle`]).
fn category_needles(clause: &Clause) -> Option<Vec<String>> {
    let Clause::Values {
        table: Table::Token,
        param,
        any_of,
        negate: false,
    } = clause
    else {
        return None;
    };
    if param != "category" || any_of.is_empty() {
        return None;
    }
    any_of
        .iter()
        .map(|p| match p {
            Pred::Token(t) => crate::search::index::category_needle(
                t.system.as_ref().map(Option::as_deref),
                t.code.as_deref(),
            ),
            _ => None,
        })
        .collect()
}

/// The `date` clause of a search whose [`driver`] `d` is a [`Clause::Dated`] reference built
/// from it ([`with_date_envelopes`]). The driver's rows carry the resource's date envelope and
/// whether it is exact (`0003_date_exact.sql`); where it is, the clause is decided on the row
/// instead of by a probe of `search_date`.
fn exact_date_clause(spec: &SearchSpec, d: usize) -> Option<usize> {
    let Clause::Dated { within, .. } = &spec.clauses[d] else {
        return None;
    };
    spec.clauses.iter().position(|c| {
        matches!(c, Clause::Values { table: Table::Date, param, any_of, negate: false }
            if param == "date" && matches!(any_of.as_slice(), [Pred::Date(r)] if r == within))
    })
}

/// The codes a `code` clause asks for, when a `subject` driver `d` can be narrowed to them: its
/// rows carry the resource's codes (see `0002_search.sql`), so patient + code is one range of
/// the lookup index ([`push_codes`]). The `code` clause is still probed as well.
fn code_range(spec: &SearchSpec, d: usize) -> Option<Vec<&TokenMatch>> {
    if lastn_driver(spec) != Some(d) {
        return None;
    }
    spec.clauses.iter().find_map(|c| match c {
        Clause::Values {
            table: Table::Token,
            param,
            any_of,
            negate: false,
        } if param == "code" => any_of
            .iter()
            .map(|p| match p {
                Pred::Token(t @ TokenMatch { code: Some(_), .. }) => Some(t),
                _ => None,
            })
            .collect::<Option<Vec<_>>>(),
        _ => None,
    })
}

/// ` and (<one of these codes>)` on per-code `subject` rows ([`code_range`]).
fn push_codes(sql: &mut Sql, tokens: &[&TokenMatch]) {
    sql.push(" and (");
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            sql.push(" or ");
        }
        // A token without a system is stored with the system '' on these rows.
        let system = match &t.system {
            Some(None) => Some(Some(String::new())),
            other => other.clone(),
        };
        sql.push("(");
        push_token(
            sql,
            "code_system",
            "code",
            &TokenMatch {
                system,
                code: t.code.clone(),
            },
        );
        sql.push(")");
    }
    sql.push(")");
}

/// `clause` on the resource `alias.res_id`: positive value clauses as a correlated `exists`
/// (`offset 0` keeps PostgreSQL from turning it into a join it would have to plan), the others
/// as in [`push_clause`].
fn push_probe(sql: &mut Sql, alias: &str, ty: &str, clause: &Clause) {
    let (values, within) = match clause {
        Clause::Values { negate: false, .. } => (clause, None),
        Clause::Dated { reference, within } => (reference.as_ref(), Some(within)),
        _ => return push_clause(sql, alias, ty, clause),
    };
    sql.push("exists (");
    push_values_query(sql, "1", ty, values, within, Some(alias), false);
    sql.push(" limit 1 offset 0)");
}

/// True when every clause beside the driver `d` becomes a correlated probe: the plan is then an
/// index range with per-row checks whatever the values, safe to plan once ([`Sql::generic`]).
fn probes_only(spec: &SearchSpec, d: usize) -> bool {
    spec.clauses.iter().enumerate().all(|(i, c)| {
        i == d
            || matches!(
                c,
                Clause::Values { negate: false, .. } | Clause::Dated { .. }
            )
    })
}

/// ` and <probe>` for every clause but the driver `d`, on the driver's rows `s`. The clauses
/// `on_row` says `s` has the columns for are decided on `s` where its columns are filled (an
/// exact date envelope, known categories) and probed only elsewhere.
fn push_other_probes(sql: &mut Sql, spec: &SearchSpec, d: usize, on_row: OnRow) {
    let ty = &spec.types[0];
    for (i, clause) in spec.clauses.iter().enumerate() {
        if i == d {
            continue;
        }
        sql.push(" and ");
        let date = match clause {
            Clause::Values { any_of, .. } if on_row.exact_date == Some(i) => {
                match any_of.as_slice() {
                    [Pred::Date(r)] => Some(r),
                    _ => None,
                }
            }
            _ => None,
        };
        let needles = category_needles(clause).filter(|_| on_row.categories);
        if let Some(r) = date {
            sql.push("(case when s.date_exact then ");
            push_date(sql, "s.date_lo", "s.date_hi", r);
        } else if let Some(needles) = needles {
            sql.push("(case when s.categories is not null then (");
            for (k, needle) in needles.iter().enumerate() {
                if k > 0 {
                    sql.push(" or ");
                }
                // `instr` is SQLite's; the PostgreSQL migration defines it.
                sql.push("instr(s.categories, ");
                sql.text(needle).push(") > 0");
            }
            sql.push(")");
        } else {
            push_probe(sql, "s", ty, clause);
            continue;
        }
        sql.push(" else ");
        push_probe(sql, "s", ty, clause);
        sql.push(" end)");
    }
}

/// [`page_sql_total`] of a search with a [`driver`] clause `d`.
fn driver_page_sql(spec: &SearchSpec, d: usize, limit: usize, total: bool) -> Sql {
    let ty = &spec.types[0];
    let reverse = spec.cursor.as_ref().is_some_and(|c| c.before);
    let mut sql = Sql {
        generic: probes_only(spec, d),
        ..Sql::default()
    };
    // Each resource once before the probes: a subject row per code repeats it.
    let on_row = OnRow::of(spec, d);
    sql.push("with m as materialized (select s.res_id, s.version_id from (");
    push_driver_select(&mut sql, spec, d, on_row);
    sql.push(") s where 1 = 1");
    if let Some(c) = spec.cursor.as_ref().filter(|_| spec.sort.is_empty()) {
        sql.push(" and (");
        sql.text(ty).push(if c.before {
            ", s.res_id) < ("
        } else {
            ", s.res_id) > ("
        });
        sql.text(&c.ty).push(", ");
        sql.text(&c.id).push(")");
    }
    push_other_probes(&mut sql, spec, d, on_row);
    sql.push(") select ").push(VERSION_COLUMNS);
    push_key_columns(&mut sql, spec);
    if total {
        sql.push(", (select count(*) from m) as total");
    }
    let page_end = |sql: &mut Sql| {
        sql.push(" limit ");
        sql.int(limit as i64);
        if spec.cursor.is_none() && spec.offset > 0 {
            sql.push(" offset ");
            sql.int(spec.offset as i64);
        }
    };
    if spec.sort.is_empty() {
        // One type: the default order is by id; the page is cut before any resource is read.
        // The driver's rows name the current version; older rows (null) look it up, and only
        // for the page's rows: the select list is evaluated after the limit.
        let dir = if reverse { "desc" } else { "asc" };
        sql.push(
            " from (select m.res_id, coalesce(m.version_id, (select r.version_id from resource r \
             where r.res_type = ",
        );
        sql.text(ty);
        let _ = write!(
            sql.text,
            " and r.res_id = m.res_id)) as version_id from m order by m.res_id {dir}"
        );
        page_end(&mut sql);
        sql.push(") p join resource_history h on h.res_type = ");
        sql.text(ty)
            .push(" and h.res_id = p.res_id and h.version_id = p.version_id order by ");
        let _ = write!(sql.text, "p.res_id {dir}");
        return sql;
    }
    sql.push(" from (select * from (select r.res_type, r.res_id, r.version_id, r.last_updated");
    push_sort_columns(&mut sql, spec);
    sql.push(" from m join resource r on r.res_type = ");
    sql.text(ty).push(" and r.res_id = m.res_id) r");
    if let Some(c) = &spec.cursor {
        sql.push(" where ");
        push_keyset(&mut sql, spec, c, "r");
    }
    sql.push(" order by ");
    push_order(&mut sql, spec, reverse, "r", true);
    page_end(&mut sql);
    sql.push(
        ") p join resource_history h on h.res_type = p.res_type and h.res_id = p.res_id \
         and h.version_id = p.version_id order by ",
    );
    push_order(&mut sql, spec, reverse, "p", true);
    sql
}

/// The columns of a stored version, for the executors.
pub const VERSION_COLUMNS: &str =
    "h.res_type, h.res_id, h.version_id, h.last_updated, h.method, h.content";

/// One page of a search, `limit` rows (the caller asks one more than it shows, to know whether a
/// next page exists). The inner query picks the page from the index and `resource`; the outer
/// one joins the JSON of just those rows and keeps the order through the selected sort keys.
pub fn page_sql(spec: &SearchSpec, limit: usize) -> Sql {
    page_sql_total(spec, limit, false)
}

/// [`page_sql`]; with `total` and a [`selective`] search, each row also carries the number of
/// matches in a `total` column, counted from the same materialized matches (one query, one
/// plan, instead of a second one for the count).
pub fn page_sql_total(spec: &SearchSpec, limit: usize, total: bool) -> Sql {
    if let Some(d) = driver(spec) {
        return driver_page_sql(spec, d, limit, total);
    }
    let mut sql = Sql::default();
    let reverse = spec.cursor.as_ref().is_some_and(|c| c.before);
    let fenced = selective(spec);
    let sorted_cursor = spec.cursor.as_ref().filter(|_| !spec.sort.is_empty());
    // The matching rows: in a MATERIALIZED CTE when selective, which keeps the planner from
    // pushing the LIMIT into the matching (see `selective`); inline otherwise.
    let mut inner = Sql::default();
    inner.push("select r.res_type, r.res_id, r.version_id, r.last_updated");
    push_sort_columns(&mut inner, spec);
    push_filter(&mut inner, spec);
    if let Some(c) = spec.cursor.as_ref().filter(|_| spec.sort.is_empty()) {
        inner.push(if c.before {
            " and (r.res_type, r.res_id) < ("
        } else {
            " and (r.res_type, r.res_id) > ("
        });
        inner.text(&c.ty).push(", ");
        inner.text(&c.id).push(")");
    }
    if fenced {
        sql.push("with m as materialized (");
        sql.append(inner);
        sql.push(") select ").push(VERSION_COLUMNS);
        push_key_columns(&mut sql, spec);
        if total {
            sql.push(", (select count(*) from m) as total");
        }
        sql.push(" from (select * from m r");
    } else {
        sql.push("select ").push(VERSION_COLUMNS);
        push_key_columns(&mut sql, spec);
        sql.push(" from (");
        if sorted_cursor.is_some() {
            sql.push("select * from (");
            sql.append(inner);
            sql.push(") r");
        } else {
            sql.append(inner);
        }
    }
    if let Some(c) = sorted_cursor {
        sql.push(" where ");
        push_keyset(&mut sql, spec, c, "r");
    }
    sql.push(" order by ");
    push_order(
        &mut sql,
        spec,
        reverse,
        "r",
        fenced || sorted_cursor.is_some(),
    );
    sql.push(" limit ");
    sql.int(limit as i64);
    if spec.cursor.is_none() && spec.offset > 0 {
        sql.push(" offset ");
        sql.int(spec.offset as i64);
    }
    sql.push(
        ") p join resource_history h on h.res_type = p.res_type and h.res_id = p.res_id \
         and h.version_id = p.version_id order by ",
    );
    push_order(&mut sql, spec, reverse, "p", true);
    sql
}

/// `, <sort expression> as k0, …`: each sort key's value of the resource aliased `r`.
fn push_sort_columns(sql: &mut Sql, spec: &SearchSpec) {
    for (i, key) in spec.sort.iter().enumerate() {
        sql.push(", ");
        push_sort_expr(sql, key);
        let _ = write!(sql.text, " as k{i}");
    }
}

/// `, p.k0, p.k1, …`: the page's sort values, read back for the paging cursors.
fn push_key_columns(sql: &mut Sql, spec: &SearchSpec) {
    for i in 0..spec.sort.len() {
        let _ = write!(sql.text, ", p.k{i}");
    }
}

fn push_order(sql: &mut Sql, spec: &SearchSpec, reverse: bool, alias: &str, outer: bool) {
    for (i, key) in spec.sort.iter().enumerate() {
        if outer {
            let _ = write!(sql.text, "k{i}");
        } else {
            push_sort_expr(sql, key);
        }
        sql.push(sort_direction(key, reverse));
        sql.push(", ");
    }
    // A `previous` page is read backwards and reversed by the caller.
    let dir = if reverse { "desc" } else { "asc" };
    let _ = write!(sql.text, "{alias}.res_type {dir}, {alias}.res_id {dir}");
}

/// `$a, $b, …)`: the rest of an `in (` list.
fn push_list(sql: &mut Sql, items: &[String]) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.text(item);
    }
    sql.push(")");
}

/// References held by the given resources (for `_include`): `(target type, target id)` of
/// rows of `param` (any parameter when `None`), restricted to `target_type` when given.
pub fn include_sql(
    source_type: &str,
    source_ids: &[String],
    param: Option<&str>,
    target_type: Option<&str>,
    base: &str,
) -> Sql {
    let mut sql = Sql::default();
    sql.push("select distinct target_type, target_id from search_reference where res_type = ");
    sql.text(source_type).push(ANY_CODE).push(" and ");
    push_local(&mut sql, base);
    if let Some(p) = param {
        sql.push(" and param = ");
        sql.text(p);
    }
    if let Some(t) = target_type {
        sql.push(" and target_type = ");
        sql.text(t);
    }
    sql.push(" and target_id is not null and res_id in (");
    push_list(&mut sql, source_ids);
    sql
}

/// Resources of `source_type` whose `param` (any when `None`) references one of the targets
/// (for `_revinclude`).
pub fn revinclude_sql(
    source_type: &str,
    param: Option<&str>,
    target_type: &str,
    target_ids: &[String],
    base: &str,
) -> Sql {
    let mut sql = Sql::default();
    sql.push("select distinct res_type, res_id from search_reference where res_type = ");
    sql.text(source_type).push(ANY_CODE).push(" and ");
    push_local(&mut sql, base);
    if let Some(p) = param {
        sql.push(" and param = ");
        sql.text(p);
    }
    sql.push(" and target_type = ");
    sql.text(target_type).push(" and target_id in (");
    push_list(&mut sql, target_ids);
    sql
}

/// The current versions of these resources of one type (deleted ones left out).
pub fn current_sql(ty: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::default();
    let _ = write!(
        sql.text,
        "select {VERSION_COLUMNS} from resource r join resource_history h on h.res_type = r.res_type \
         and h.res_id = r.res_id and h.version_id = r.version_id where r.deleted = false and r.res_type = "
    );
    sql.text(ty).push(" and r.res_id in (");
    push_list(&mut sql, ids);
    sql
}

/// `$lastn` (https://hl7.org/fhir/R4/observation-operation-lastn.html): of the Observations
/// matching `spec`, the newest `max` per code (by effective date; ties by last update, or by
/// id when answered from a reference driver, see [`driver_lastn_sql`]).
pub fn lastn_sql(spec: &SearchSpec, max: usize) -> Sql {
    if let Some(d) = driver(spec).filter(|&d| !matches!(spec.clauses[d], Clause::Id { .. })) {
        return driver_lastn_sql(spec, d, max);
    }
    let mut sql = Sql::default();
    let _ = write!(
        sql.text,
        "select {VERSION_COLUMNS} from resource_history h join (select distinct res_type, res_id, version_id from (\
         select r.res_type, r.res_id, r.version_id, row_number() over (partition by c.system, c.code \
         order by (select max(d.hi) from search_date d where d.res_type = r.res_type and d.res_id = r.res_id \
         and d.param = 'date') desc nulls last, r.last_updated desc, r.res_id) as n"
    );
    // One row per code of each Observation: an Observation with two codings (SpO2 as 2708-6
    // and 59408-5) competes in both groups and is returned once.
    push_filter_join(
        &mut sql,
        spec,
        " join search_token c on c.res_type = r.res_type and c.res_id = r.res_id and c.param = 'code'",
    );
    sql.push(") ranked where n <= ");
    sql.int(max as i64);
    sql.push(
        ") p on h.res_type = p.res_type and h.res_id = p.res_id and h.version_id = p.version_id \
              order by h.res_id",
    );
    sql
}

/// A `Values` clause and the date envelope a [`Clause::Dated`] adds to it.
fn split_dated(clause: &Clause) -> (&Clause, Option<&DateRange>) {
    match clause {
        Clause::Dated { reference, within } => (reference.as_ref(), Some(within)),
        c => (c, None),
    }
}

/// The [`driver`] of a `$lastn` search when it is the `subject` reference (the usual
/// `patient=`), whose index rows carry the resource's codes (see `0002_search.sql`).
pub fn lastn_driver(spec: &SearchSpec) -> Option<usize> {
    driver(spec).filter(|&d| {
        matches!(split_dated(&spec.clauses[d]).0,
            Clause::Values { table: Table::Reference, param, .. } if param == "subject")
    })
}

/// The (system, code) pairs on the rows of the [`lastn_driver`] clause `d`.
pub fn lastn_codes_sql(spec: &SearchSpec, d: usize) -> Sql {
    let mut sql = Sql {
        generic: probes_only(spec, d),
        ..Sql::default()
    };
    let (values, within) = split_dated(&spec.clauses[d]);
    push_values_query(
        &mut sql,
        "distinct code_system, code",
        &spec.types[0],
        values,
        within,
        None,
        true,
    );
    if let Some(codes) = code_range(spec, d) {
        push_codes(&mut sql, &codes);
    }
    sql.push(" and code is not null");
    sql
}

/// `$lastn` over a [`lastn_driver`] clause `d`: for each of `codes`, the newest `max` rows of
/// that code, read in the lookup index's order (newest effective time first) and checked
/// against the other clauses until `max` pass.
pub fn lastn_pick_sql(spec: &SearchSpec, d: usize, codes: &[(String, String)], max: usize) -> Sql {
    let ty = &spec.types[0];
    let (values, within) = split_dated(&spec.clauses[d]);
    let mut sql = Sql {
        generic: probes_only(spec, d),
        ..Sql::default()
    };
    let _ = write!(
        sql.text,
        "select {VERSION_COLUMNS} from resource r join resource_history h on h.res_type = r.res_type \
         and h.res_id = r.res_id and h.version_id = r.version_id where r.res_type = "
    );
    sql.text(ty).push(" and r.res_id in (");
    for (i, (system, code)) in codes.iter().enumerate() {
        if i > 0 {
            sql.push(" union all ");
        }
        sql.push("select res_id from (select s.res_id from (");
        let on_row = OnRow {
            exact_date: None,
            ..OnRow::of(spec, d)
        };
        push_values_query(
            &mut sql,
            &format!("res_id, date_hi, code_system, code{}", on_row.columns()),
            ty,
            values,
            within,
            None,
            true,
        );
        sql.push(") s where s.code_system = ");
        sql.text(system).push(" and s.code = ");
        sql.text(code);
        push_other_probes(&mut sql, spec, d, on_row);
        sql.push(" order by s.date_hi desc nulls last, s.res_id desc limit ");
        sql.int(max as i64);
        let _ = write!(sql.text, ") b{i}");
    }
    sql.push(") order by h.res_id");
    sql
}

/// [`lastn_sql`] for a search driven by a reference clause `d` (the usual `patient=`): the
/// reference rows carry the envelope of the Observation's `date` values, whose upper end is the
/// effective time `$lastn` orders by, so only the code (and the other clauses) are probed.
fn driver_lastn_sql(spec: &SearchSpec, d: usize, max: usize) -> Sql {
    let ty = &spec.types[0];
    let mut sql = Sql::default();
    let _ = write!(
        sql.text,
        "select {VERSION_COLUMNS} from (select distinct res_id from (select s.res_id, \
         row_number() over (partition by c.system, c.code order by s.date_hi desc nulls last, \
         s.res_id desc) as n from ("
    );
    // One row per resource: a resource referencing the patient twice ranks once.
    let on_row = OnRow {
        exact_date: None,
        ..OnRow::of(spec, d)
    };
    let (values, within) = split_dated(&spec.clauses[d]);
    push_values_query(
        &mut sql,
        &format!("distinct res_id, date_hi{}", on_row.columns()),
        ty,
        values,
        within,
        None,
        false,
    );
    sql.push(") s join search_token c on c.res_type = ");
    sql.text(ty)
        .push(" and c.res_id = s.res_id and c.param = 'code' where 1 = 1");
    push_other_probes(&mut sql, spec, d, on_row);
    sql.push(") ranked where n <= ");
    sql.int(max as i64);
    sql.push(") p join resource r on r.res_type = ");
    sql.text(ty).push(
        " and r.res_id = p.res_id join resource_history h on h.res_type = r.res_type \
         and h.res_id = r.res_id and h.version_id = r.version_id order by h.res_id",
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_driver_searches_with_probes_are_planned_generically() {
        let patient = Clause::Values {
            table: Table::Reference,
            param: "subject".into(),
            any_of: vec![Pred::Reference {
                target_type: Some("Patient".into()),
                id: "p1".into(),
                base: "http://x/fhir".into(),
            }],
            negate: false,
        };
        let code = |negate| Clause::Values {
            table: Table::Token,
            param: "code".into(),
            any_of: vec![Pred::Token(TokenMatch {
                system: Some(Some("http://loinc.org".into())),
                code: Some("8867-4".into()),
            })],
            negate,
        };
        let spec = |clauses: Vec<Clause>| SearchSpec {
            types: vec!["Observation".into()],
            clauses,
            ..Default::default()
        };
        let page = |clauses| page_sql_total(&spec(clauses), 11, true);
        let driven = page(vec![code(false), patient.clone()]);
        assert!(driven.generic);
        // The code narrows the subject rows' index range and is probed as well.
        assert!(driven.text.contains("code_system = "), "{}", driven.text);
        assert!(driven.text.contains("exists (select 1 from search_token"));
        // A negation is an uncorrelated subquery whose best plan depends on its values.
        assert!(!page(vec![code(true), patient.clone()]).generic);
        // Without a driver the planner picks the join order from the values.
        assert!(!page(vec![code(false)]).generic);
        assert!(lastn_codes_sql(&spec(vec![patient.clone(), code(false)]), 0).generic);
    }

    #[test]
    fn placeholders_follow_binds() {
        let spec = SearchSpec {
            types: vec!["Observation".into()],
            clauses: vec![
                Clause::Values {
                    table: Table::Token,
                    param: "code".into(),
                    any_of: vec![Pred::Token(TokenMatch {
                        system: Some(Some("http://loinc.org".into())),
                        code: Some("8867-4".into()),
                    })],
                    negate: false,
                },
                Clause::Id {
                    ids: vec!["a".into()],
                    negate: false,
                },
            ],
            ..Default::default()
        };
        // Counted over the code clause's index rows: type, param, system, code, then the id.
        let sql = count_sql(&spec);
        assert_eq!(sql.binds.len(), 5);
        assert!(sql.text.contains("$5"));
        assert!(!sql.text.contains("$6"));
        // system|code is one row per resource: no distinct needed.
        assert!(
            sql.text
                .contains("from (select res_id from (select res_id from search_token"),
            "{}",
            sql.text
        );
        assert_eq!(sql.binds[0], Bind::Text("Observation".into()));
        // The page of a search with an id clause is computed from its matches first.
        let page = page_sql(&spec, 21);
        assert!(
            page.text.starts_with("with m as materialized ("),
            "{}",
            page.text
        );
    }

    #[test]
    fn appended_parts_are_renumbered() {
        let mut a = Sql::default();
        a.push("x = ").text("1");
        let mut b = Sql::default();
        b.push("y = ")
            .text("2")
            .push(" and '$' = '$' and z = ")
            .text("3");
        a.push(" and ").append(b);
        assert_eq!(a.text, "x = $1 and y = $2 and '$' = '$' and z = $3");
        assert_eq!(a.binds.len(), 3);
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_escape("50%_a\\"), "50\\%\\_a\\\\");
    }
}

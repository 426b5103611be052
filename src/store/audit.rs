//! The audit trail's storage: appended in batches by the background writer of [`crate::audit`],
//! read back for admins' AuditEvent searches. SQLite keeps a row per audited request
//! (`audit_log`, `0017_audit_narrow.sql`); PostgreSQL a row per written batch (`audit_block`,
//! `0019_audit_blocks.sql`), whose lines this module decodes and filters.

use super::{Store, StoreError};

/// One audited request, as stored. `id` is assigned by the database (ignored on insert).
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub recorded: i64,
    pub kind: String,
    pub subtype: String,
    pub action: String,
    pub outcome: String,
    pub status: i32,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub role: Option<String>,
    pub organization: Option<String>,
    pub issuer: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub address: Option<String>,
    pub request_id: Option<String>,
}

const COLUMNS: &str = "id, recorded, kind, subtype, action, outcome, status, client_id, subject, \
                       role, organization, issuer, entity_type, entity_id, address, request_id";

/// One audited request as appended to the trail (`0017_audit_narrow.sql`): who and which
/// interaction as ids of the two dictionaries, everything else borrowed from the request's
/// entry, so that building a batch allocates nothing per row.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditInsert<'a> {
    pub recorded: i64,
    pub agent: Option<i32>,
    pub interaction: i16,
    pub status: i16,
    pub entity_type: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    pub address: Option<std::net::IpAddr>,
    pub request_id: Option<&'a str>,
}

/// Who made audited requests, as the dictionary `audit_agent` holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AuditAgent<'a> {
    pub client_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub role: Option<&'a str>,
    pub organization: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

/// Text from a request or a token (a typed username, a client id, a claim) as the trail stores
/// it: without control characters (PostgreSQL refuses NUL in text; the agent key uses two of
/// them as separators) and at most 256 characters. Borrowed when already so.
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    // Control characters are C0 and DEL (one byte each in UTF-8) and C1 (U+0080 to U+009F,
    // lead byte 0xC2): text without those bytes has none, checked a byte at a time. Text with
    // 0xC2 (a `£`, say) goes through the exact check.
    let plain = |s: &str| !s.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2);
    if s.len() <= 256 && (plain(s) || !s.chars().any(char::is_control)) {
        return s.into();
    }
    s.chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect::<String>()
        .into()
}

impl AuditAgent<'_> {
    /// The dictionary key: the [`clean`] columns joined with U+001F, U+001E for a missing one
    /// (the migration builds the same), so that the key names one agent.
    pub fn key_into(&self, out: &mut String) {
        out.clear();
        for (i, v) in [
            self.client_id,
            self.subject,
            self.role,
            self.organization,
            self.issuer,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                out.push('\u{1f}');
            }
            match v {
                Some(v) => out.push_str(&clean(v)),
                None => out.push('\u{1e}'),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == AuditAgent::default()
    }
}

/// Rows in COPY's text format: tab-separated columns, `\N` for null, backslash escapes for
/// backslash, tab, newline and carriage return
/// (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.2).
/// Each row starts with its id: `first`, `first + 1`, …. Appended to `out`.
fn copy_text(out: &mut Vec<u8>, first: i64, rows: &[AuditInsert<'_>]) {
    use std::io::Write as _;
    fn opt(out: &mut Vec<u8>, s: Option<&str>) {
        let Some(s) = s else {
            out.extend_from_slice(b"\\N");
            return;
        };
        if !s
            .bytes()
            .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
        {
            out.extend_from_slice(s.as_bytes());
            return;
        }
        for b in s.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
    }
    let mut num = itoa::Buffer::new();
    out.reserve(rows.len() * 96);
    for (id, r) in (first..).zip(rows) {
        out.extend_from_slice(num.format(id).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(num.format(r.recorded).as_bytes());
        out.push(b'\t');
        match r.agent {
            Some(a) => out.extend_from_slice(num.format(a).as_bytes()),
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
        out.extend_from_slice(num.format(r.interaction).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(num.format(r.status).as_bytes());
        out.push(b'\t');
        opt(out, r.entity_type);
        out.push(b'\t');
        opt(out, r.entity_id);
        out.push(b'\t');
        match r.address {
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
        opt(out, r.request_id);
        out.push(b'\n');
    }
}

/// A value bound to a condition's placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditValue {
    Text(String),
    Int(i64),
}

/// A column of an audit row that a search compares as text (`audit_event`'s names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditColumn {
    Kind,
    Subtype,
    Action,
    Outcome,
    Subject,
    ClientId,
    Role,
    Organization,
    Address,
}

impl AuditColumn {
    fn sql(self) -> &'static str {
        match self {
            AuditColumn::Kind => "kind",
            AuditColumn::Subtype => "subtype",
            AuditColumn::Action => "action",
            AuditColumn::Outcome => "outcome",
            AuditColumn::Subject => "subject",
            AuditColumn::ClientId => "client_id",
            AuditColumn::Role => "role",
            AuditColumn::Organization => "organization",
            AuditColumn::Address => "address",
        }
    }

    fn of(self, r: &AuditRow) -> Option<&str> {
        match self {
            AuditColumn::Kind => Some(&r.kind),
            AuditColumn::Subtype => Some(&r.subtype),
            AuditColumn::Action => Some(&r.action),
            AuditColumn::Outcome => Some(&r.outcome),
            AuditColumn::Subject => r.subject.as_deref(),
            AuditColumn::ClientId => r.client_id.as_deref(),
            AuditColumn::Role => r.role.as_deref(),
            AuditColumn::Organization => r.organization.as_deref(),
            AuditColumn::Address => r.address.as_deref(),
        }
    }
}

/// One condition of an audit search. SQLite answers it in SQL over `audit_event`; PostgreSQL
/// keeps the trail in blocks (`0019_audit_blocks.sql`) and tests each decoded row, skipping
/// whole blocks by their id and time ranges where the condition allows.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditFilter {
    /// The column equals one of the values (a missing value matches none).
    AnyOf(AuditColumn, Vec<String>),
    /// The row is one of these ids (none: no row).
    Ids(Vec<i64>),
    IdAbove(i64),
    IdBelow(i64),
    /// `lo <= recorded <= hi`, or (`inside` false) outside that range.
    Recorded {
        lo: i64,
        hi: i64,
        inside: bool,
    },
    /// The entity is one of these: `(Some(type), id)` or `(None, id)` for an id of any type.
    Entity(Vec<(Option<String>, String)>),
}

impl AuditFilter {
    /// SQL over `audit_event`'s columns with `?` where each value goes, in order. The SQL is
    /// this module's own; values are always bound.
    fn sql(&self) -> (String, Vec<AuditValue>) {
        use AuditValue::{Int, Text};
        let or = |parts: Vec<String>| {
            if parts.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("({})", parts.join(" or "))
            }
        };
        match self {
            AuditFilter::AnyOf(c, values) => (
                or(vec![format!("{} = ?", c.sql()); values.len()]),
                values.iter().cloned().map(Text).collect(),
            ),
            AuditFilter::Ids(ids) => (
                or(vec!["id = ?".to_owned(); ids.len()]),
                ids.iter().copied().map(Int).collect(),
            ),
            AuditFilter::IdAbove(id) => ("id > ?".into(), vec![Int(*id)]),
            AuditFilter::IdBelow(id) => ("id < ?".into(), vec![Int(*id)]),
            AuditFilter::Recorded { lo, hi, inside } => {
                match (*inside, *lo == i64::MIN, *hi == i64::MAX) {
                    (true, _, true) => ("recorded >= ?".into(), vec![Int(*lo)]),
                    (true, true, _) => ("recorded <= ?".into(), vec![Int(*hi)]),
                    (true, ..) => (
                        "(recorded >= ? and recorded <= ?)".into(),
                        vec![Int(*lo), Int(*hi)],
                    ),
                    (false, ..) => (
                        "(recorded < ? or recorded > ?)".into(),
                        vec![Int(*lo), Int(*hi)],
                    ),
                }
            }
            AuditFilter::Entity(entities) => {
                let mut parts = Vec::new();
                let mut values = Vec::new();
                for (t, id) in entities {
                    if let Some(t) = t {
                        parts.push("(entity_type = ? and entity_id = ?)".to_owned());
                        values.push(Text(t.clone()));
                    } else {
                        parts.push("entity_id = ?".to_owned());
                    }
                    values.push(Text(id.clone()));
                }
                (or(parts), values)
            }
        }
    }

    /// Whether the row meets the condition (what [`AuditFilter::sql`] selects).
    fn matches(&self, r: &AuditRow) -> bool {
        match self {
            AuditFilter::AnyOf(c, values) => c.of(r).is_some_and(|v| values.iter().any(|x| x == v)),
            AuditFilter::Ids(ids) => ids.contains(&r.id),
            AuditFilter::IdAbove(id) => r.id > *id,
            AuditFilter::IdBelow(id) => r.id < *id,
            AuditFilter::Recorded { lo, hi, inside } => {
                (*lo..=*hi).contains(&r.recorded) == *inside
            }
            AuditFilter::Entity(entities) => entities.iter().any(|(t, id)| {
                r.entity_id.as_deref() == Some(id.as_str())
                    && t.as_ref()
                        .is_none_or(|t| r.entity_type.as_deref() == Some(t.as_str()))
            }),
        }
    }

    /// False when the line cannot meet the condition, decided from its numbers and escaped
    /// text without building its row (a scan by entity or date skips most lines so); true
    /// when the row must tell.
    fn may_match(&self, l: &Line<'_>) -> bool {
        match self {
            AuditFilter::Ids(ids) => ids.contains(&l.id),
            AuditFilter::IdAbove(id) => l.id > *id,
            AuditFilter::IdBelow(id) => l.id < *id,
            AuditFilter::Recorded { lo, hi, inside } => {
                (*lo..=*hi).contains(&l.recorded) == *inside
            }
            // Without a backslash the escaped text is the text.
            AuditFilter::Entity(entities) => match l.entity_id {
                None => false,
                Some(e) if e.contains('\\') => true,
                Some(e) => entities.iter().any(|(_, id)| id == e),
            },
            AuditFilter::AnyOf(..) => true,
        }
    }

    /// SQL over `audit_block`'s columns that holds for every block with a row meeting the
    /// condition (`true` when the blocks' ranges cannot tell).
    fn block_sql(&self) -> (String, Vec<AuditValue>) {
        use AuditValue::Int;
        match self {
            AuditFilter::Ids(ids) if !ids.is_empty() => (
                format!(
                    "({})",
                    vec!["(first_id <= ? and last_id >= ?)"; ids.len()].join(" or ")
                ),
                ids.iter().flat_map(|i| [Int(*i), Int(*i)]).collect(),
            ),
            AuditFilter::Ids(_) => ("false".into(), vec![]),
            AuditFilter::IdAbove(id) => ("last_id > ?".into(), vec![Int(*id)]),
            AuditFilter::IdBelow(id) => ("first_id < ?".into(), vec![Int(*id)]),
            AuditFilter::Recorded {
                lo,
                hi,
                inside: true,
            } => (
                "(recorded_max >= ? and recorded_min <= ?)".into(),
                vec![Int(*lo), Int(*hi)],
            ),
            AuditFilter::Recorded {
                lo,
                hi,
                inside: false,
            } => (
                "(recorded_min < ? or recorded_max > ?)".into(),
                vec![Int(*lo), Int(*hi)],
            ),
            AuditFilter::AnyOf(..) | AuditFilter::Entity(_) => ("true".into(), vec![]),
        }
    }
}

/// `where …` for the conditions (`(sql, values)` with `?` placeholders) with `$n` placeholders
/// from `$first`, and the values in order.
fn where_clause(conds: &[(String, Vec<AuditValue>)], first: usize) -> (String, Vec<AuditValue>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for (i, (c, vals)) in conds.iter().enumerate() {
        sql.push_str(if i == 0 { " where " } else { " and " });
        let mut parts = c.split('?');
        sql.push_str(parts.next().unwrap_or_default());
        for (part, value) in parts.zip(vals) {
            sql.push_str(&format!("${}", first + values.len()));
            values.push(value.clone());
            sql.push_str(part);
        }
    }
    (sql, values)
}

macro_rules! bind_all {
    ($q:expr, $values:expr) => {{
        let mut q = $q;
        for v in $values {
            q = match v {
                AuditValue::Text(s) => q.bind(s.clone()),
                AuditValue::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

/// The columns an audit row is written with (after `id`; the order of a block's lines).
const AUDIT_COLUMNS: &str =
    "recorded, agent, interaction, status, entity_type, entity_id, address, request_id";

/// Ids a PostgreSQL batch takes from `audit_id_seq` at once, its increment: one `nextval` and
/// one block per at most this many rows.
const AUDIT_BLOCK: usize = 4096;

/// What the audit writer keeps between batches: the buffer a block's text is built in, kept
/// because a new one per batch (hundreds of kilobytes) came back from the allocator as fresh
/// pages that the kernel zeroed each time (`clear_page_erms`, 1.3 % of the machine in a profile
/// of the read benchmark).
#[derive(Debug, Default)]
pub struct AuditWriter {
    text: Vec<u8>,
}

/// The `(kind, subtype, action)` of each interaction id, and the agents of the agent ids seen,
/// for rendering decoded block rows.
#[derive(Default)]
struct Names {
    interactions: std::collections::HashMap<i16, (String, String, String)>,
    agents: std::collections::HashMap<i32, AgentNames>,
}

type AgentNames = [Option<String>; 5];

impl Names {
    async fn load(pool: &sqlx::PgPool) -> Result<Names, StoreError> {
        let rows: Vec<(i16, String, String, String)> =
            sqlx::query_as("select id, kind, subtype, action from audit_interaction")
                .fetch_all(pool)
                .await?;
        Ok(Names {
            interactions: rows
                .into_iter()
                .map(|(i, k, s, a)| (i, (k, s, a)))
                .collect(),
            agents: Default::default(),
        })
    }

    /// Loads the agents of `lines` that are not known yet.
    async fn add_agents(
        &mut self,
        pool: &sqlx::PgPool,
        lines: &[Line<'_>],
    ) -> Result<(), StoreError> {
        let mut missing: Vec<i32> = lines
            .iter()
            .filter_map(|l| l.agent)
            .filter(|a| !self.agents.contains_key(a))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        type Agent = (
            i32,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Agent> = sqlx::query_as(
            "select id, client_id, subject, role, organization, issuer from audit_agent \
             where id = any($1)",
        )
        .bind(&missing)
        .fetch_all(pool)
        .await?;
        for (id, c, s, r, o, i) in rows {
            self.agents.insert(id, [c, s, r, o, i]);
        }
        Ok(())
    }

    fn row(&self, l: &Line<'_>) -> AuditRow {
        let none = Default::default();
        let [client_id, subject, role, organization, issuer] = l
            .agent
            .and_then(|a| self.agents.get(&a))
            .unwrap_or(&none)
            .clone();
        let (kind, subtype, action) = self
            .interactions
            .get(&l.interaction)
            .cloned()
            .unwrap_or_default();
        AuditRow {
            id: l.id,
            recorded: l.recorded,
            kind,
            subtype,
            action,
            outcome: outcome(l.status).to_owned(),
            status: l.status,
            client_id,
            subject,
            role,
            organization,
            issuer,
            entity_type: l.entity_type.map(unescape),
            entity_id: l.entity_id.map(unescape),
            address: l.address.map(unescape),
            request_id: l.request_id.map(unescape),
        }
    }
}

/// The AuditEvent.outcome of an HTTP status (http://hl7.org/fhir/audit-event-outcome): success,
/// minor failure (the request's fault), serious failure (ours); as the `audit_event` views.
fn outcome(status: i32) -> &'static str {
    match status {
        ..400 => "0",
        400..500 => "4",
        _ => "8",
    }
}

/// One line of a block, its text fields still escaped.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line<'a> {
    id: i64,
    recorded: i64,
    agent: Option<i32>,
    interaction: i16,
    status: i32,
    entity_type: Option<&'a str>,
    entity_id: Option<&'a str>,
    address: Option<&'a str>,
    request_id: Option<&'a str>,
}

/// A line as [`copy_text`] writes it, or `None` if it is not one.
fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut f = line.split('\t');
    let mut next = || f.next();
    fn text(v: &str) -> Option<&str> {
        (v != "\\N").then_some(v)
    }
    let line = Line {
        id: next()?.parse().ok()?,
        recorded: next()?.parse().ok()?,
        agent: match next()? {
            "\\N" => None,
            v => Some(v.parse().ok()?),
        },
        interaction: next()?.parse().ok()?,
        status: next()?.parse().ok()?,
        entity_type: text(next()?),
        entity_id: text(next()?),
        address: text(next()?),
        request_id: text(next()?),
    };
    next().is_none().then_some(line)
}

/// A COPY text value without its escapes (the inverse of [`copy_text`]'s).
fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    out
}

/// The lines of a block; a line that does not parse (nothing the writer wrote) is logged,
/// without its content, and skipped.
fn block_lines(first_id: i64, data: &[u8]) -> Vec<Line<'_>> {
    let Ok(text) = std::str::from_utf8(data) else {
        tracing::error!(block = first_id, "an audit block is not UTF-8; skipped");
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let line = parse_line(l);
            if line.is_none() {
                tracing::error!(
                    block = first_id,
                    "an audit block has a line that does not parse; skipped"
                );
            }
            line
        })
        .collect()
}

/// Blocks read per query while scanning the trail.
const BLOCKS_PER_QUERY: i64 = 4;

/// Scans PostgreSQL's audit blocks that may hold rows meeting `filters`, newest first (or
/// oldest first), and hands each matching row to `found` until it returns false.
async fn scan_blocks(
    pool: &sqlx::PgPool,
    filters: &[AuditFilter],
    oldest_first: bool,
    mut found: impl FnMut(AuditRow) -> bool,
) -> Result<(), StoreError> {
    let mut names = Names::load(pool).await?;
    let mut conds: Vec<(String, Vec<AuditValue>)> =
        filters.iter().map(AuditFilter::block_sql).collect();
    let (order, after) = if oldest_first {
        ("asc", "first_id > ?")
    } else {
        ("desc", "first_id < ?")
    };
    conds.push((
        after.to_owned(),
        vec![AuditValue::Int(if oldest_first {
            i64::MIN
        } else {
            i64::MAX
        })],
    ));
    // Blocks do not overlap, so rows with given ids are in at most that many blocks: stop
    // there rather than walk the rest of the trail (a read by id looks at one block).
    let mut blocks_left = filters
        .iter()
        .filter_map(|f| match f {
            AuditFilter::Ids(ids) => Some(ids.len() as i64),
            _ => None,
        })
        .min()
        .unwrap_or(i64::MAX);
    while blocks_left > 0 {
        let limit = blocks_left.min(BLOCKS_PER_QUERY);
        blocks_left -= limit;
        let (clause, values) = where_clause(&conds, 1);
        let sql = format!(
            "select first_id, data from audit_block{clause} order by first_id {order} limit {limit}"
        );
        let blocks: Vec<(i64, Vec<u8>)> =
            bind_all!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), &values)
                .fetch_all(pool)
                .await?;
        for (first_id, data) in &blocks {
            let mut lines = block_lines(*first_id, data);
            if !oldest_first {
                lines.reverse();
            }
            names.add_agents(pool, &lines).await?;
            for line in &lines {
                if !filters.iter().all(|f| f.may_match(line)) {
                    continue;
                }
                let row = names.row(line);
                if filters.iter().all(|f| f.matches(&row)) && !found(row) {
                    return Ok(());
                }
            }
        }
        match blocks.last() {
            Some((first_id, _)) if blocks.len() as i64 == limit => {
                if let Some(last) = conds.last_mut() {
                    last.1 = vec![AuditValue::Int(*first_id)];
                }
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

impl Store {
    /// Appends audit rows. PostgreSQL takes each block of at most [`AUDIT_BLOCK`] rows as one
    /// row of `audit_block` (`0019_audit_blocks.sql`: its cost is per byte, not per row), with
    /// ids from one `nextval`. SQLite, in process, takes them row by row through one prepared
    /// statement, in one transaction.
    pub async fn insert_audit(
        &self,
        rows: &[AuditInsert<'_>],
        state: &mut AuditWriter,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            Store::Pg { audit, .. } => {
                for block in rows.chunks(AUDIT_BLOCK) {
                    let first: i64 = sqlx::query_scalar("select nextval('audit_id_seq')")
                        .fetch_one(audit)
                        .await?;
                    state.text.clear();
                    copy_text(&mut state.text, first, block);
                    let (lo, hi) = block.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
                        (lo.min(r.recorded), hi.max(r.recorded))
                    });
                    sqlx::query(
                        "insert into audit_block (first_id, last_id, n, recorded_min, \
                         recorded_max, data) values ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(first)
                    .bind(first + block.len() as i64 - 1)
                    .bind(block.len() as i32)
                    .bind(lo)
                    .bind(hi)
                    .bind(&state.text[..])
                    .execute(audit)
                    .await?;
                }
            }
            Store::Sqlite { write, .. } => {
                let sql = format!(
                    "insert into audit_log ({AUDIT_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8)"
                );
                let mut tx = write.begin().await?;
                for r in rows {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(r.recorded)
                        .bind(r.agent)
                        .bind(r.interaction)
                        .bind(r.status)
                        .bind(r.entity_type)
                        .bind(r.entity_id)
                        .bind(r.address.map(|a| a.to_string()))
                        .bind(r.request_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
    /// The id of an agent in the `audit_agent` dictionary, added if new. Several processes may
    /// add the same one at once: the key is unique, and the no-op update makes `returning`
    /// answer for the row that is already there.
    pub async fn audit_agent_id(&self, agent: &AuditAgent<'_>) -> Result<i32, StoreError> {
        let mut key = String::new();
        agent.key_into(&mut key);
        let sql = "insert into audit_agent (key, client_id, subject, role, organization, issuer) \
                   values ($1, $2, $3, $4, $5, $6) \
                   on conflict (key) do update set key = excluded.key returning id";
        Ok(on_pool!(self, write, pool => {
            sqlx::query_scalar(sql)
                .bind(&key)
                .bind(agent.client_id.map(clean))
                .bind(agent.subject.map(clean))
                .bind(agent.role.map(clean))
                .bind(agent.organization.map(clean))
                .bind(agent.issuer.map(clean))
                .fetch_one(pool)
                .await?
        }))
    }

    /// The id of an interaction (`kind`, `subtype`, `action`) in the `audit_interaction`
    /// dictionary, added if new.
    pub async fn audit_interaction_id(
        &self,
        kind: &str,
        subtype: &str,
        action: &str,
    ) -> Result<i16, StoreError> {
        let sql = "insert into audit_interaction (key, kind, subtype, action) \
                   values ($1, $2, $3, $4) \
                   on conflict (key) do update set key = excluded.key returning id";
        let key = format!("{kind} {subtype} {action}");
        Ok(on_pool!(self, write, pool => {
            sqlx::query_scalar(sql)
                .bind(&key)
                .bind(kind)
                .bind(subtype)
                .bind(action)
                .fetch_one(pool)
                .await?
        }))
    }

    /// The audit row `id`.
    pub async fn audit_row(&self, id: i64) -> Result<Option<AuditRow>, StoreError> {
        Ok(self
            .audit_rows(&[AuditFilter::Ids(vec![id])], false, 1)
            .await?
            .pop())
    }

    /// Rows meeting every condition, newest first (or oldest first), at most `limit`.
    pub async fn audit_rows(
        &self,
        filters: &[AuditFilter],
        oldest_first: bool,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let limit = usize::try_from(limit).unwrap_or(0);
        match self {
            Store::Pg { pool, .. } => {
                let mut rows = Vec::new();
                if limit > 0 {
                    scan_blocks(pool, filters, oldest_first, |r| {
                        rows.push(r);
                        rows.len() < limit
                    })
                    .await?;
                }
                Ok(rows)
            }
            Store::Sqlite { read, .. } => {
                let conds: Vec<_> = filters.iter().map(AuditFilter::sql).collect();
                let (clause, values) = where_clause(&conds, 1);
                let order = if oldest_first { "asc" } else { "desc" };
                let sql = format!(
                    "select {COLUMNS} from audit_event{clause} order by id {order} limit {limit}"
                );
                Ok(bind_all!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), &values)
                    .fetch_all(read)
                    .await?)
            }
        }
    }

    /// How many rows meet every condition. On PostgreSQL, without conditions, from the blocks'
    /// counts; with some, by scanning the blocks they may be in.
    pub async fn audit_count(&self, filters: &[AuditFilter]) -> Result<i64, StoreError> {
        match self {
            Store::Pg { pool, .. } if filters.is_empty() => Ok(sqlx::query_scalar(
                "select coalesce(sum(n), 0)::bigint from audit_block",
            )
            .fetch_one(pool)
            .await?),
            Store::Pg { pool, .. } => {
                let mut n = 0;
                scan_blocks(pool, filters, false, |_| {
                    n += 1;
                    true
                })
                .await?;
                Ok(n)
            }
            Store::Sqlite { read, .. } => {
                let conds: Vec<_> = filters.iter().map(AuditFilter::sql).collect();
                let (clause, values) = where_clause(&conds, 1);
                let sql = format!("select count(*) from audit_event{clause}");
                Ok(
                    bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &values)
                        .fetch_one(read)
                        .await?,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_escape_what_copy_reads_specially() {
        let row = AuditInsert {
            recorded: 7,
            agent: Some(3),
            interaction: 2,
            status: 200,
            entity_type: None,
            entity_id: Some("a\\b\tc\nd\re"),
            address: Some("::1".parse().expect("ip")),
            request_id: None,
        };
        assert_eq!(
            String::from_utf8({
                let mut out = b"kept ".to_vec();
                copy_text(&mut out, 41, &[row]);
                out
            })
            .expect("utf-8"),
            "kept 41\t7\t3\t2\t200\t\\N\ta\\\\b\\tc\\nd\\re\t::1\t\\N\n"
        );
    }

    #[test]
    fn block_lines_read_back_what_the_writer_wrote() {
        let rows = [
            AuditInsert {
                recorded: 7,
                agent: Some(3),
                interaction: 2,
                status: 200,
                entity_type: Some("Patient"),
                entity_id: Some("a\\b\tc\nd\re\\N"),
                address: Some("::1".parse().expect("ip")),
                request_id: Some("r-1"),
            },
            AuditInsert {
                recorded: 8,
                agent: None,
                interaction: 1,
                status: 503,
                entity_type: None,
                entity_id: Some("\\N"),
                address: None,
                request_id: None,
            },
        ];
        let mut text = Vec::new();
        copy_text(&mut text, 40, &rows);
        let lines = block_lines(40, &text);
        assert_eq!(lines.len(), 2);
        let mut names = Names::default();
        names
            .interactions
            .insert(2, ("rest".into(), "read".into(), "R".into()));
        names.agents.insert(
            3,
            [Some("c".into()), None, Some("admin".into()), None, None],
        );
        let first = names.row(&lines[0]);
        assert_eq!((first.id, first.recorded, first.status), (40, 7, 200));
        assert_eq!((first.kind.as_str(), first.outcome.as_str()), ("rest", "0"));
        assert_eq!(first.client_id.as_deref(), Some("c"));
        assert_eq!(first.role.as_deref(), Some("admin"));
        assert_eq!(first.entity_id.as_deref(), Some("a\\b\tc\nd\re\\N"));
        assert_eq!(first.address.as_deref(), Some("::1"));
        let second = names.row(&lines[1]);
        assert_eq!((second.id, second.outcome.as_str()), (41, "8"));
        assert_eq!(second.entity_type, None);
        assert_eq!(
            second.entity_id.as_deref(),
            Some("\\N"),
            "a value, not null"
        );
        assert_eq!(second.client_id, None);
        // Lines that are not the writer's are skipped.
        assert!(block_lines(1, b"1\t2\n\xff\n").is_empty());
        assert_eq!(
            block_lines(1, b"x\t1\t\\N\t1\t200\t\\N\t\\N\t\\N\t\\N\n").len(),
            0
        );
    }

    #[test]
    fn filters_in_sql_and_in_rust_agree() {
        let row = AuditRow {
            id: 10,
            recorded: 100,
            kind: "rest".into(),
            action: "R".into(),
            outcome: "0".into(),
            entity_type: Some("Patient".into()),
            entity_id: Some("p1".into()),
            ..Default::default()
        };
        let cases = [
            (
                AuditFilter::AnyOf(AuditColumn::Action, vec!["C".into(), "R".into()]),
                true,
                "(action = ? or action = ?)",
            ),
            (
                AuditFilter::AnyOf(AuditColumn::Role, vec!["admin".into()]),
                false,
                "(role = ?)",
            ),
            (AuditFilter::Ids(vec![]), false, "1 = 0"),
            (AuditFilter::Ids(vec![9, 10]), true, "(id = ? or id = ?)"),
            (AuditFilter::IdBelow(10), false, "id < ?"),
            (AuditFilter::IdAbove(9), true, "id > ?"),
            (
                AuditFilter::Recorded {
                    lo: 100,
                    hi: i64::MAX,
                    inside: true,
                },
                true,
                "recorded >= ?",
            ),
            (
                AuditFilter::Recorded {
                    lo: i64::MIN,
                    hi: 99,
                    inside: true,
                },
                false,
                "recorded <= ?",
            ),
            (
                AuditFilter::Recorded {
                    lo: 50,
                    hi: 150,
                    inside: false,
                },
                false,
                "(recorded < ? or recorded > ?)",
            ),
            (
                AuditFilter::Entity(vec![
                    (Some("Observation".into()), "p1".into()),
                    (None, "p1".into()),
                ]),
                true,
                "((entity_type = ? and entity_id = ?) or entity_id = ?)",
            ),
            (
                AuditFilter::Entity(vec![(Some("Observation".into()), "p1".into())]),
                false,
                "((entity_type = ? and entity_id = ?))",
            ),
        ];
        let line = Line {
            id: 10,
            recorded: 100,
            agent: None,
            interaction: 1,
            status: 200,
            entity_type: Some("Patient"),
            entity_id: Some("p1"),
            address: None,
            request_id: None,
        };
        for (filter, matches, sql) in cases {
            assert_eq!(filter.matches(&row), matches, "{filter:?}");
            assert!(filter.may_match(&line) || !matches, "{filter:?}");
            let (s, values) = filter.sql();
            assert_eq!(s, sql);
            assert_eq!(s.matches('?').count(), values.len(), "{filter:?}");
            let (b, values) = filter.block_sql();
            assert_eq!(b.matches('?').count(), values.len(), "{filter:?}");
        }
    }

    #[test]
    fn agent_keys_name_one_agent() {
        let mut a = String::new();
        let mut b = String::new();
        AuditAgent {
            client_id: Some("c"),
            subject: Some("s"),
            ..Default::default()
        }
        .key_into(&mut a);
        AuditAgent {
            client_id: Some("c\u{1f}s"),
            ..Default::default()
        }
        .key_into(&mut b);
        assert_ne!(
            a, b,
            "a separator inside a value cannot forge another agent's key"
        );
        assert_eq!(a, "c\u{1f}s\u{1f}\u{1e}\u{1f}\u{1e}\u{1f}\u{1e}");
        assert_eq!(clean("x\0y"), "xy");
        assert_eq!(clean("£\u{85}x\u{7f}"), "£x", "C1 controls and DEL too");
        assert!(matches!(clean("£ ok"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(clean(&"z".repeat(300)).len(), 256);
        assert!(AuditAgent::default().is_empty());
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        let conds = vec![
            AuditFilter::Recorded {
                lo: 5,
                hi: i64::MAX,
                inside: true,
            }
            .sql(),
            AuditFilter::AnyOf(AuditColumn::Action, vec!["R".into(), "E".into()]).sql(),
        ];
        let (sql, values) = where_clause(&conds, 1);
        assert_eq!(
            sql,
            " where recorded >= $1 and (action = $2 or action = $3)"
        );
        assert_eq!(values.len(), 3);
        assert_eq!(values[2], AuditValue::Text("E".into()));
    }
}

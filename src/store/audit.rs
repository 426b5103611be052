//! The audit trail's table (`0009_audit.sql`): rows appended in batches by the background writer
//! of [`crate::audit`], read back for admins' AuditEvent searches.

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

/// One audited request as appended to `audit_log` (`0017_audit_narrow.sql`): who and which
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
    if s.len() <= 256 && !s.chars().any(char::is_control) {
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
    out.reserve(rows.len() * 96);
    for (id, r) in (first..).zip(rows) {
        let _ = write!(out, "{id}\t{}\t", r.recorded);
        match r.agent {
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => out.extend_from_slice(b"\\N"),
        }
        let _ = write!(out, "\t{}\t{}\t", r.interaction, r.status);
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

/// One condition of an audit search: SQL over the table's columns with `?` where each value
/// goes, in order. The SQL comes from the audit module's fixed table of parameters, never from
/// the request; values are always bound.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditCond {
    pub sql: String,
    pub values: Vec<AuditValue>,
}

/// `where …` for `conds` with `$n` placeholders from `$first`, and the values in order.
fn where_clause(conds: &[AuditCond], first: usize) -> (String, Vec<AuditValue>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for (i, c) in conds.iter().enumerate() {
        sql.push_str(if i == 0 { " where " } else { " and " });
        let mut parts = c.sql.split('?');
        sql.push_str(parts.next().unwrap_or_default());
        for (part, value) in parts.zip(&c.values) {
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

/// The columns an audit row is written with (after `id` in a PostgreSQL COPY).
const AUDIT_COLUMNS: &str =
    "recorded, agent, interaction, status, entity_type, entity_id, address, request_id";

/// Copies one block of rows (COPY text format) into the partition `table`.
async fn copy_audit(pool: &sqlx::PgPool, table: &str, text: &[u8]) -> Result<(), StoreError> {
    use sqlx::postgres::PgPoolCopyExt as _;
    // Names are the writer's own (`audit_log_<lower>`), quoted all the same.
    let mut copy = pool
        .copy_in_raw(&format!(
            "copy \"{}\" (id, {AUDIT_COLUMNS}) from stdin",
            table.replace('"', "")
        ))
        .await?;
    copy.send(text).await?;
    copy.finish().await?;
    Ok(())
}

/// Ids a PostgreSQL batch takes from `audit_log_id_seq` at once, its increment
/// (`0018_audit_partitions.sql`): one `nextval` per COPY of at most this many rows.
const AUDIT_BLOCK: usize = 4096;

/// Session advisory lock held by the one process that builds partitions' entity indexes.
const AUDIT_INDEX_LOCK: i64 = 0x7662_6175_6469_7431;

/// What the audit writer keeps between batches. PostgreSQL: the partition of `audit_log` it
/// last wrote to, ids `[lower, upper)` in the table `name`, and its COPY buffer. While a batch's
/// ids fall inside that partition, the writer looks nothing up and copies into the table
/// directly, which costs PostgreSQL less than routing each row through the parent (3.7-4.4
/// against 4.4-5.2 us per row in a variant of scripts/bench-audit-rows.py). The buffer is kept
/// because a new one per batch (hundreds of kilobytes) came back from the allocator as fresh
/// pages that the kernel zeroed each time (`clear_page_erms`, 1.3 % of the machine in a profile
/// of the read benchmark).
#[derive(Debug, Default)]
pub struct AuditWriter {
    partition: Option<(i64, i64, String)>,
    text: Vec<u8>,
}

/// Whether the partition `(lower, upper, name)` holds `id`.
fn covers(&(lower, upper, _): &(i64, i64, String), id: i64) -> bool {
    lower <= id && id < upper
}

/// The range of a new partition for `id`: the multiple of `size` around it, cut where the
/// partitions below and above it end and begin (a size changed in between, or ids skipped).
fn partition_range(id: i64, size: i64, below: Option<i64>, above: Option<i64>) -> (i64, i64) {
    let start = id - id.rem_euclid(size);
    let lower = below.map_or(start, |b| b.max(start));
    let upper = above.map_or(start.saturating_add(size), |a| {
        a.min(start.saturating_add(size))
    });
    (lower, upper)
}

impl Store {
    /// Appends audit rows. PostgreSQL takes them through `COPY … FROM STDIN`
    /// (https://www.postgresql.org/docs/current/sql-copy.html), its cheapest way in: no
    /// statement executed per row, nothing to plan; one transaction per block of ids. SQLite,
    /// in process, takes them row by row through one prepared statement, in one transaction.
    /// True when a PostgreSQL partition was added: the ones before it can now be indexed
    /// ([`Store::index_audit_partitions`]).
    pub async fn insert_audit(
        &self,
        rows: &[AuditInsert<'_>],
        state: &mut AuditWriter,
    ) -> Result<bool, StoreError> {
        if rows.is_empty() {
            return Ok(false);
        }
        match self {
            Store::Pg { pool, audit, .. } => {
                let mut added = false;
                for block in rows.chunks(AUDIT_BLOCK) {
                    let first: i64 = sqlx::query_scalar("select nextval('audit_log_id_seq')")
                        .fetch_one(audit)
                        .await?;
                    let (_, _, table) = match state.partition.take() {
                        Some(known) if covers(&known, first) => state.partition.insert(known),
                        _ => {
                            let (found, new) = audit_partition_for(pool, first).await?;
                            added |= new;
                            state.partition.insert(found)
                        }
                    };
                    state.text.clear();
                    copy_text(&mut state.text, first, block);
                    // Forgotten on failure: the next attempt looks the partition up again, in
                    // case this one went away.
                    if let Err(e) = copy_audit(audit, table, &state.text).await {
                        state.partition = None;
                        return Err(e);
                    }
                }
                return Ok(added);
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
        Ok(false)
    }

    /// Builds the entity index of every PostgreSQL audit partition that has a newer one
    /// (`0018_audit_partitions.sql`), one at a time and without blocking writers
    /// (`CREATE INDEX CONCURRENTLY`,
    /// https://www.postgresql.org/docs/15/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY).
    /// One process builds at a time, holding an advisory lock on a connection of its own that
    /// closes afterwards, so that a build cut short releases it. Returns how many were built.
    pub async fn index_audit_partitions(&self) -> Result<usize, StoreError> {
        use sqlx::Connection as _;
        let Store::Pg { pool, .. } = self else {
            return Ok(0);
        };
        let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(AUDIT_INDEX_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if !locked {
            return Ok(0);
        }
        let todo: Vec<String> = sqlx::query_scalar(
            "select name from audit_partition \
             where not entity_indexed and lower < (select max(lower) from audit_partition) \
             order by lower",
        )
        .fetch_all(&mut conn)
        .await?;
        for name in &todo {
            // Names are the writer's own (`audit_log_<lower>`), quoted all the same.
            let table = format!("\"{}\"", name.replace('"', ""));
            let index = format!("\"{}_entity\"", name.replace('"', ""));
            // A build that stopped half way leaves an invalid index of this name behind.
            for sql in [
                format!("drop index concurrently if exists {index}"),
                format!(
                    "create index concurrently {index} on {table} (entity_id) \
                     where entity_id is not null"
                ),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await?;
            }
            sqlx::query("update audit_partition set entity_indexed = true where name = $1")
                .bind(name)
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(todo.len())
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
        let sql = format!("select {COLUMNS} from audit_event where id = $1");
        Ok(
            on_pool!(self, read, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?),
        )
    }

    /// Rows matching every condition, newest first (or oldest first), at most `limit`.
    pub async fn audit_rows(
        &self,
        conds: &[AuditCond],
        oldest_first: bool,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let (clause, values) = where_clause(conds, 1);
        let order = if oldest_first { "asc" } else { "desc" };
        let sql = format!(
            "select {COLUMNS} from audit_event{clause} order by id {order} limit {}",
            limit.max(0)
        );
        Ok(on_pool!(self, read, pool => {
            bind_all!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), &values).fetch_all(pool).await?
        }))
    }

    /// How many rows match every condition.
    pub async fn audit_count(&self, conds: &[AuditCond]) -> Result<i64, StoreError> {
        let (clause, values) = where_clause(conds, 1);
        let sql = format!("select count(*) from audit_event{clause}");
        Ok(on_pool!(self, read, pool => {
            bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &values).fetch_one(pool).await?
        }))
    }
}

/// The partition of `audit_log` for `id`, added if missing (and then `true`). Creators take
/// turns on the `audit_partition` table's lock; readers and writers of the trail do not wait
/// for it.
async fn audit_partition_for(
    pool: &sqlx::PgPool,
    id: i64,
) -> Result<((i64, i64, String), bool), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("lock table audit_partition in share row exclusive mode")
        .execute(&mut *tx)
        .await?;
    let found: Option<(i64, i64, String)> = sqlx::query_as(
        "select lower, upper, name from audit_partition where lower <= $1 and $1 < upper",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(range) = found {
        tx.commit().await?;
        return Ok((range, false));
    }
    let (size, below, above): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
        "select (select ids from audit_partition_size), \
                (select max(upper) from audit_partition where upper <= $1), \
                (select min(lower) from audit_partition where lower > $1)",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let (lower, upper) = partition_range(id, size, below, above);
    let name = format!("audit_log_{lower}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create table \"{name}\" partition of audit_log for values from ({lower}) to ({upper})"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query("insert into audit_partition (name, lower, upper) values ($1, $2, $3)")
        .bind(&name)
        .bind(lower)
        .bind(upper)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(((lower, upper, name), true))
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
    fn partitions_hold_whole_multiples_and_never_overlap() {
        const M: i64 = 1 << 24;
        assert_eq!(partition_range(M + 4096, M, Some(M), None), (M, 2 * M));
        assert_eq!(
            partition_range(3 * M + 8192, M, Some(M), None),
            (3 * M, 4 * M)
        );
        // The size shrank while a partition was open: the new one starts where it ends.
        assert_eq!(
            partition_range(M + 8192, 4096, Some(M + 4096), None),
            (M + 8192, M + 12288)
        );
        // A block below a newer partition (another process wrote first).
        assert_eq!(
            partition_range(M, 2 * M, Some(M / 2), Some(M + M / 2)),
            (M / 2, M + M / 2)
        );
        let p = (M, 2 * M, "audit_log_16777216".to_owned());
        assert!(covers(&p, M) && covers(&p, 2 * M - 1));
        assert!(!covers(&p, 2 * M) && !covers(&p, M - 1));
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
        assert_eq!(clean(&"z".repeat(300)).len(), 256);
        assert!(AuditAgent::default().is_empty());
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        let conds = vec![
            AuditCond {
                sql: "recorded >= ?".into(),
                values: vec![AuditValue::Int(5)],
            },
            AuditCond {
                sql: "(action = ? or action = ?)".into(),
                values: vec![AuditValue::Text("R".into()), AuditValue::Text("E".into())],
            },
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

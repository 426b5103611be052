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
fn copy_text(rows: &[AuditInsert<'_>]) -> Vec<u8> {
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
    let mut out = Vec::with_capacity(rows.len() * 96);
    for r in rows {
        let _ = write!(out, "{}\t", r.recorded);
        match r.agent {
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => out.extend_from_slice(b"\\N"),
        }
        let _ = write!(out, "\t{}\t{}\t", r.interaction, r.status);
        opt(&mut out, r.entity_type);
        out.push(b'\t');
        opt(&mut out, r.entity_id);
        out.push(b'\t');
        match r.address {
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => out.extend_from_slice(b"\\N"),
        }
        out.push(b'\t');
        opt(&mut out, r.request_id);
        out.push(b'\n');
    }
    out
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

impl Store {
    /// Appends audit rows in one transaction. PostgreSQL takes them through `COPY … FROM STDIN`
    /// (https://www.postgresql.org/docs/current/sql-copy.html), its cheapest way in: no
    /// statement executed per row, nothing to plan. SQLite, in process, takes them row by row
    /// through one prepared statement.
    pub async fn insert_audit(&self, rows: &[AuditInsert<'_>]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        const COLUMNS: &str = "audit_log (recorded, agent, interaction, status, entity_type, entity_id, address, \
             request_id)";
        match self {
            Store::Pg { pool, .. } => {
                use sqlx::postgres::PgPoolCopyExt as _;
                let mut copy = pool
                    .copy_in_raw(&format!("copy {COLUMNS} from stdin"))
                    .await?;
                copy.send(copy_text(rows)).await?;
                copy.finish().await?;
            }
            Store::Sqlite { write, .. } => {
                let sql = format!("insert into {COLUMNS} values ($1, $2, $3, $4, $5, $6, $7, $8)");
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
            String::from_utf8(copy_text(&[row])).expect("utf-8"),
            "7\t3\t2\t200\t\\N\ta\\\\b\\tc\\nd\\re\t::1\t\\N\n"
        );
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

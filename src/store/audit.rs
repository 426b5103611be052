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

/// Rows in COPY's text format: tab-separated columns, `\N` for null, backslash escapes for
/// backslash, tab, newline and carriage return
/// (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.2).
fn copy_text(rows: &[AuditRow]) -> Vec<u8> {
    use std::io::Write as _;
    fn text(out: &mut Vec<u8>, s: &str) {
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
    fn opt(out: &mut Vec<u8>, s: &Option<String>) {
        match s {
            Some(s) => text(out, s),
            None => out.extend_from_slice(b"\\N"),
        }
    }
    let mut out = Vec::with_capacity(rows.len() * 128);
    for r in rows {
        let _ = write!(out, "{}\t", r.recorded);
        for s in [&r.kind, &r.subtype, &r.action, &r.outcome] {
            text(&mut out, s);
            out.push(b'\t');
        }
        let _ = write!(out, "{}", r.status);
        for s in [
            &r.client_id,
            &r.subject,
            &r.role,
            &r.organization,
            &r.issuer,
            &r.entity_type,
            &r.entity_id,
            &r.address,
            &r.request_id,
        ] {
            out.push(b'\t');
            opt(&mut out, s);
        }
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
    pub async fn insert_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        const INSERT: &str = "insert into audit_event (recorded, kind, subtype, action, outcome, \
             status, client_id, subject, role, organization, issuer, entity_type, entity_id, \
             address, request_id)";
        match self {
            Store::Pg { pool, .. } => {
                use sqlx::postgres::PgPoolCopyExt as _;
                let mut copy = pool
                    .copy_in_raw(&format!(
                        "{} from stdin",
                        INSERT.replacen("insert into", "copy", 1)
                    ))
                    .await?;
                copy.send(copy_text(rows)).await?;
                copy.finish().await?;
            }
            Store::Sqlite { write, .. } => {
                let sql = format!(
                    "{INSERT} values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15)"
                );
                let mut tx = write.begin().await?;
                for r in rows {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(r.recorded)
                        .bind(&r.kind)
                        .bind(&r.subtype)
                        .bind(&r.action)
                        .bind(&r.outcome)
                        .bind(r.status)
                        .bind(&r.client_id)
                        .bind(&r.subject)
                        .bind(&r.role)
                        .bind(&r.organization)
                        .bind(&r.issuer)
                        .bind(&r.entity_type)
                        .bind(&r.entity_id)
                        .bind(&r.address)
                        .bind(&r.request_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
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
        let row = AuditRow {
            recorded: 7,
            kind: "rest".into(),
            subtype: "read".into(),
            action: "R".into(),
            outcome: "0".into(),
            status: 200,
            subject: Some("a\\b\tc\nd".into()),
            entity_id: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(copy_text(&[row])).expect("utf-8"),
            "7\trest\tread\tR\t0\t200\t\\N\ta\\\\b\\tc\\nd\t\\N\t\\N\t\\N\t\\N\tx\t\\N\t\\N\n"
        );
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

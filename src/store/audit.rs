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
    /// Appends audit rows in one transaction. PostgreSQL takes them as one array per column
    /// (`unnest`): one prepared statement whatever the batch size, no per-row parameters to
    /// parse. SQLite, in process, takes them row by row through one prepared statement.
    pub async fn insert_audit(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        const INSERT: &str = "insert into audit_event (recorded, kind, subtype, action, outcome, \
             status, client_id, subject, role, organization, issuer, entity_type, entity_id, \
             address, request_id)";
        match self {
            Store::Pg { pool, .. } => {
                let col = |f: fn(&AuditRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
                let opt = |f: fn(&AuditRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
                let sql = format!(
                    "{INSERT} select * from unnest($1::bigint[], $2::text[], $3::text[], \
                     $4::text[], $5::text[], $6::int[], $7::text[], $8::text[], $9::text[], \
                     $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[])"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(rows.iter().map(|r| r.recorded).collect::<Vec<i64>>())
                    .bind(col(|r| &r.kind))
                    .bind(col(|r| &r.subtype))
                    .bind(col(|r| &r.action))
                    .bind(col(|r| &r.outcome))
                    .bind(rows.iter().map(|r| r.status).collect::<Vec<i32>>())
                    .bind(opt(|r| r.client_id.as_deref()))
                    .bind(opt(|r| r.subject.as_deref()))
                    .bind(opt(|r| r.role.as_deref()))
                    .bind(opt(|r| r.organization.as_deref()))
                    .bind(opt(|r| r.issuer.as_deref()))
                    .bind(opt(|r| r.entity_type.as_deref()))
                    .bind(opt(|r| r.entity_id.as_deref()))
                    .bind(opt(|r| r.address.as_deref()))
                    .bind(opt(|r| r.request_id.as_deref()))
                    .execute(pool)
                    .await?;
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

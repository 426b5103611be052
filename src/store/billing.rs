//! What the monthly billing run (issue 7, `billing::run`) reads and records besides FHIR
//! resources (`0015_billing.sql`): every version of a type up to an instant, which recipients'
//! months are done, and the lease that lets one server process schedule runs.

use std::collections::HashSet;

use super::{Store, StoreError, Version, query};

impl Store {
    /// The next `limit` versions of resources of type `ty` recorded before `until`
    /// (microseconds), deletes included, in (id, version) order after `after`.
    pub async fn history_page(
        &self,
        ty: &str,
        until: i64,
        after: Option<(&str, i64)>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let mut sql = query::Sql::default();
        sql.push(
            "select res_type, res_id, version_id, last_updated, method, content \
             from resource_history where res_type = ",
        );
        sql.text(ty).push(" and last_updated < ");
        sql.bind(query::Bind::Int(until));
        if let Some((id, version)) = after {
            sql.push(" and (res_id, version_id) > (");
            sql.text(id).push(", ");
            sql.bind(query::Bind::Int(version)).push(")");
        }
        sql.push(" order by res_id, version_id limit ");
        sql.bind(query::Bind::Int(limit as i64));
        self.reader().versions(&sql).await
    }

    /// How many resources of type `ty` exist or existed (deleted ones included).
    pub async fn count_of_type(&self, ty: &str) -> Result<i64, StoreError> {
        let sql = "select count(*) from resource where res_type = $1";
        Ok(on_pool!(self, read, pool => sqlx::query_scalar(sql).bind(ty).fetch_one(pool).await?))
    }

    /// The recipients whose run of `month` (`YYYY-MM`) is done.
    pub async fn billed(&self, month: &str) -> Result<HashSet<String>, StoreError> {
        let sql = "select recipient from billing_run where month = $1";
        let rows: Vec<(String,)> = on_pool!(self, read, pool => sqlx::query_as(sql)
            .bind(month).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// Records that `recipient`'s run of `month` is done (again: the time of the latest).
    pub async fn mark_billed(
        &self,
        recipient: &str,
        month: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = "insert into billing_run (recipient, month, done_at) values ($1, $2, $3) \
                   on conflict (recipient, month) do update set done_at = excluded.done_at";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(recipient).bind(month).bind(now).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` until `now + lease` (microseconds); false
    /// while another holder has it.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let sql = "insert into lease (name, holder, lease_until) values ($1, $2, $3 + $4) \
                   on conflict (name) do update set holder = excluded.holder, \
                   lease_until = excluded.lease_until \
                   where lease.holder = excluded.holder or lease.lease_until < $3 \
                   returning name";
        let row: Option<(String,)> = on_pool!(self, write, pool => sqlx::query_as(sql)
            .bind(name).bind(holder).bind(now).bind(lease).fetch_optional(pool).await?);
        Ok(row.is_some())
    }
}

/// A statement waiting to be sent (`statement_outbox`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueuedStatement {
    pub invoice_id: String,
    pub attempts: i32,
}

impl super::StoreTx {
    /// Queues the statement of Invoice `invoice_id`, due at once, in this transaction.
    pub async fn queue_statement(&mut self, invoice_id: &str, now: i64) -> Result<(), StoreError> {
        let sql = "insert into statement_outbox (invoice_id, queued_at, next_at) \
                   values ($1, $2, $2) on conflict (invoice_id) do nothing";
        match self {
            super::StoreTx::Pg(tx) => {
                sqlx::query(sql)
                    .bind(invoice_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
            }
            super::StoreTx::Sqlite(tx) => {
                sqlx::query(sql)
                    .bind(invoice_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Statements due at `now`, oldest first, at most `limit`.
    pub async fn due_statements(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<QueuedStatement>, StoreError> {
        let sql = "select invoice_id, attempts from statement_outbox \
                   where next_at is not null and next_at <= $1 order by next_at limit $2";
        Ok(on_pool!(self, read, pool => sqlx::query_as(sql)
            .bind(now).bind(limit).fetch_all(pool).await?))
    }

    /// Records a statement's attempt: sent (`error` `None`), or failed and due again at
    /// `next_at`.
    pub async fn statement_tried(
        &self,
        invoice_id: &str,
        now: i64,
        error: Option<&str>,
        next_at: i64,
    ) -> Result<(), StoreError> {
        let sql = "update statement_outbox set attempts = attempts + 1, last_error = $2, \
                   sent_at = case when $2 is null then $3 else null end, \
                   next_at = case when $2 is null then null else $4 end \
                   where invoice_id = $1";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(invoice_id).bind(error).bind(now).bind(next_at)
            .execute(pool).await.map(|_| ())?);
        Ok(())
    }
}

/// The Observations that are device readings about a Patient (`subject` a Patient, `device`
/// set), as (patient id, start of `effective`) rows of the search index.
const READINGS: &str = "from search_reference s \
     join search_date d on d.res_type = s.res_type and d.res_id = s.res_id and d.param = 'date' \
     where s.res_type = 'Observation' and s.param = 'subject' and s.target_type = 'Patient' \
     and exists (select 1 from search_reference r where r.res_type = 'Observation' \
     and r.res_id = s.res_id and r.param = 'device' and r.target_type = 'Device')";

impl Store {
    /// Each patient's first device reading before `until` (microseconds).
    pub async fn first_readings(&self, until: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql =
            format!("select s.target_id, min(d.lo) {READINGS} and d.lo < $1 group by s.target_id");
        Ok(
            on_pool!(self, read, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(until).fetch_all(pool).await?),
        )
    }

    /// The device readings of patients from `from` until `until` (microseconds): (patient id,
    /// instant).
    pub async fn readings(&self, from: i64, until: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = format!("select s.target_id, d.lo {READINGS} and d.lo >= $1 and d.lo < $2");
        Ok(
            on_pool!(self, read, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(from).bind(until).fetch_all(pool).await?),
        )
    }

    /// The current resources of `ty` with the token `system|code` in `param` whose `date`
    /// overlaps `from..until` (microseconds).
    pub async fn coded_in_period(
        &self,
        ty: &str,
        param: &str,
        (system, code): (&str, &str),
        from: i64,
        until: i64,
    ) -> Result<Vec<Version>, StoreError> {
        let mut sql = query::Sql::default();
        sql.push(
            "select h.res_type, h.res_id, h.version_id, h.last_updated, h.method, h.content \
             from resource r join resource_history h on h.res_type = r.res_type \
             and h.res_id = r.res_id and h.version_id = r.version_id \
             where r.deleted = false and r.res_type = ",
        );
        sql.text(ty);
        sql.push(" and exists (select 1 from search_token t where t.res_type = r.res_type and t.res_id = r.res_id and t.param = ");
        sql.text(param).push(" and t.system = ");
        sql.text(system).push(" and t.code = ");
        sql.text(code);
        sql.push(") and exists (select 1 from search_date d where d.res_type = r.res_type and d.res_id = r.res_id and d.param = 'date' and d.lo < ");
        sql.bind(query::Bind::Int(until)).push(" and d.hi >= ");
        sql.bind(query::Bind::Int(from)).push(")");
        self.reader().versions(&sql).await
    }
}

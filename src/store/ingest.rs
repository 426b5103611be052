//! Device ingestion's tables and bulk writes (`0010_ingest.sql`, issue 5): raw inbound messages
//! kept for their retention window, and the creates of a whole hub batch in one statement.

use std::collections::HashSet;

use serde_json::Value;

use super::{Store, StoreError, StoreTx, Write, Written};
use crate::fhir::types::{ResourceId, ResourceType};

/// A raw inbound message to keep.
#[derive(Debug, Clone)]
pub struct RawMessage<'a> {
    pub sha256: &'a str,
    /// Microseconds since the epoch.
    pub received_at: i64,
    /// `hub` or `cellular/{vendor}`.
    pub channel: &'a str,
    /// The authenticated sender (a hub's client id, a vendor).
    pub sender: &'a str,
    pub organization: Option<&'a str>,
    pub body: &'a [u8],
    /// JSON: what became of each reading.
    pub results: &'a str,
}

/// A kept message, as read back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredMessage {
    pub id: i64,
    pub sha256: String,
    pub received_at: i64,
    pub channel: String,
    pub sender: String,
    pub organization: Option<String>,
    pub body: Vec<u8>,
    pub results: String,
}

const MESSAGE_COLUMNS: &str =
    "id, sha256, received_at, channel, sender, organization, body, results";

impl StoreTx {
    /// Keeps a raw message with the outcome of its readings, in this transaction: the message
    /// and what it created commit together.
    pub async fn insert_message(&mut self, m: &RawMessage<'_>) -> Result<(), StoreError> {
        let sql = "insert into ingest_message \
                   (sha256, received_at, channel, sender, organization, body, results) \
                   values ($1, $2, $3, $4, $5, $6, $7)";
        macro_rules! run {
            ($tx:expr) => {
                sqlx::query(sql)
                    .bind(m.sha256)
                    .bind(m.received_at)
                    .bind(m.channel)
                    .bind(m.sender)
                    .bind(m.organization)
                    .bind(m.body)
                    .bind(m.results)
                    .execute(&mut **$tx)
                    .await
                    .map(|_| ())?
            };
        }
        match self {
            StoreTx::Pg(tx) => run!(tx),
            StoreTx::Sqlite(tx) => run!(tx),
        };
        Ok(())
    }

    /// Serialises transactions that may create the same resources: each key is locked until
    /// this transaction ends, in sorted order so that two batches sharing keys cannot deadlock.
    /// SQLite's write transactions are serial anyway.
    pub async fn lock_keys(&mut self, keys: &[String]) -> Result<(), StoreError> {
        if let StoreTx::Pg(tx) = self
            && !keys.is_empty()
        {
            let mut sorted = keys.to_vec();
            sorted.sort();
            sorted.dedup();
            sqlx::query(
                "select pg_advisory_xact_lock(hashtextextended(k, 0)) \
                 from unnest($1::text[]) with ordinality as x(k, n) order by n",
            )
            .bind(sorted)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Which of `ids` exist as resources of `ty`, deleted or not: a deliberately deleted
    /// reading is not created again by a replay.
    pub async fn existing(
        &mut self,
        ty: ResourceType,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let found: Vec<(String,)> = match self {
            StoreTx::Pg(tx) => {
                sqlx::query_as(
                    "select res_id from resource where res_type = $1 and res_id = any($2)",
                )
                .bind(ty.as_str())
                .bind(ids)
                .fetch_all(&mut **tx)
                .await?
            }
            StoreTx::Sqlite(tx) => {
                let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "select res_id from resource where res_type = ",
                );
                q.push_bind(ty.as_str()).push(" and res_id in (");
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(id);
                }
                q.push(")");
                q.build_query_as().fetch_all(&mut **tx).await?
            }
        };
        Ok(found.into_iter().map(|(id,)| id).collect())
    }

    /// Creates new resources at the given ids, in this transaction: one statement for all of
    /// them on PostgreSQL. Each goes through the one write path's planning (version, `meta`,
    /// history, search index, change log). An id that exists already fails the whole call
    /// with a version conflict; callers check [`StoreTx::existing`] under
    /// [`StoreTx::lock_keys`] first.
    pub async fn create_many(
        &mut self,
        items: &mut [(ResourceType, ResourceId, Value)],
    ) -> Result<Vec<Written>, StoreError> {
        let mut written = Vec::with_capacity(items.len());
        let mut stamped: Vec<&Value> = Vec::with_capacity(items.len());
        for (ty, id, resource) in items.iter_mut() {
            match super::plan(*ty, id, None, Write::Create { resource })? {
                super::Planned::Write {
                    written: w,
                    resource,
                    ..
                } => {
                    written.push(w);
                    stamped.push(resource.unwrap_or(&Value::Null));
                }
                super::Planned::Noop(w) => written.push(w),
            }
        }
        let rows: Vec<super::VersionRow<'_>> = written
            .iter()
            .zip(&stamped)
            .map(|(w, r)| super::version_row(w, super::Method::Post, Some(*r)))
            .collect();
        match self {
            StoreTx::Pg(tx) => {
                if !rows.is_empty() {
                    match super::apply_pg_creates(tx, &rows).await {
                        Err(StoreError::Db(sqlx::Error::Database(e)))
                            if e.is_unique_violation() =>
                        {
                            return Err(StoreError::VersionConflict {
                                expected: 0,
                                current: None,
                            });
                        }
                        other => other?,
                    }
                }
            }
            StoreTx::Sqlite(tx) => {
                for row in &rows {
                    super::apply_sqlite_in_tx(tx, row).await?;
                }
            }
        }
        Ok(written)
    }
}

impl Store {
    /// The kept messages with this SHA-256 (or the latest ones without), newest first; only
    /// those of `organizations` when given (the caller's tenancy).
    pub async fn messages(
        &self,
        sha256: Option<&str>,
        organizations: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // The organizations as a JSON array: one parameter on either backend.
        let orgs = organizations.map(|o| serde_json::json!(o).to_string());
        let rows: Vec<StoredMessage> = match self {
            Store::Pg { pool, .. } => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {MESSAGE_COLUMNS} from ingest_message \
                     where ($1::text is null or sha256 = $1) \
                     and ($2::jsonb is null or organization in \
                          (select jsonb_array_elements_text($2::jsonb))) \
                     order by id desc limit $3"
                )))
                .bind(sha256)
                .bind(orgs)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite { read, .. } => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "select {MESSAGE_COLUMNS} from ingest_message \
                     where ($1 is null or sha256 = $1) \
                     and ($2 is null or organization in (select value from json_each($2))) \
                     order by id desc limit $3"
                )))
                .bind(sha256)
                .bind(orgs)
                .bind(limit)
                .fetch_all(read)
                .await?
            }
        };
        Ok(rows)
    }

    /// Deletes the messages received before `before` (microseconds); returns how many.
    pub async fn purge_messages(&self, before: i64) -> Result<u64, StoreError> {
        let sql = "delete from ingest_message where received_at < $1";
        Ok(
            on_pool!(self, write, pool => sqlx::query(sql).bind(before).execute(pool).await?.rows_affected()),
        )
    }
}

/// A cellular vendor integration (`0011_ingest_vendor.sql`).
#[derive(Clone, PartialEq, sqlx::FromRow)]
pub struct VendorRecord {
    pub id: String,
    pub vendor: String,
    pub organization: String,
    pub auth: String,
    pub secret: String,
    pub api_url: Option<String>,
    pub api_token: Option<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for VendorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorRecord")
            .field("id", &self.id)
            .field("vendor", &self.vendor)
            .field("organization", &self.organization)
            .field("auth", &self.auth)
            .field("secret", &"***")
            .field("api_url", &self.api_url)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Store {
    pub async fn put_vendor(&self, v: &VendorRecord) -> Result<(), StoreError> {
        let sql = "insert into ingest_vendor \
                   (id, vendor, organization, auth, secret, api_url, api_token, created_at) \
                   values ($1, $2, $3, $4, $5, $6, $7, $8)";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(&v.id).bind(&v.vendor).bind(&v.organization).bind(&v.auth).bind(&v.secret)
            .bind(&v.api_url).bind(&v.api_token)
            .bind(v.created_at).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    pub async fn vendor(&self, id: &str) -> Result<Option<VendorRecord>, StoreError> {
        if id.contains('\0') {
            return Ok(None);
        }
        let sql = "select id, vendor, organization, auth, secret, api_url, api_token, created_at \
                   from ingest_vendor where id = $1";
        Ok(on_pool!(self, read, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await?))
    }
}

//! The only room that speaks SQL (DESIGN.md rule 2).
//!
//! One write path (rule 1): [`StoreTx::write`] assigns the version, stamps `meta`, writes the
//! history row, moves the current-version pointer, rewrites the search-index rows and appends to
//! the change log, all inside the caller's database transaction. A FHIR write or a whole
//! transaction Bundle is one [`StoreTx`].
//!
//! PostgreSQL and SQLite share one body of code: the [`backend!`] macro instantiates the same
//! functions once per sqlx driver, so the two backends cannot drift apart (rule 6). The few
//! dialect differences are spelled out where they occur.

/// Runs `$body` with `$pool` bound to the pool for `$kind` (`read` or `write`) of either backend.
macro_rules! on_pool {
    ($store:expr, read, $pool:ident => $body:expr) => {
        match $store {
            Store::Pg { pool: $pool, .. } => $body,
            Store::Sqlite { read: $pool, .. } => $body,
        }
    };
    ($store:expr, write, $pool:ident => $body:expr) => {
        match $store {
            Store::Pg { pool: $pool, .. } => $body,
            Store::Sqlite { write: $pool, .. } => $body,
        }
    };
}

pub mod audit;
pub mod auth;
mod batch;
pub mod billing;
pub mod changes;
pub mod ingest;
pub mod notify;
pub mod query;
mod time_fmt;

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use time_fmt::{
    format_http_date, format_instant, now_micros, parse_instant_micros, parse_instant_range,
};

use crate::fhir::types::{ResourceId, ResourceType};
use crate::search::index::IndexRows;

/// Errors of the store. Constraint violations that mean something to a client are turned into
/// variants here, in one place, rather than matched as strings by callers (STYLE.md habit 3).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `If-Match` named a version that is not the current one (or the resource does not exist).
    #[error("version conflict: expected version {expected}, current is {current:?}")]
    VersionConflict { expected: i64, current: Option<i64> },
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("migration error")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("resource could not be serialised")]
    Json(#[from] serde_json::Error),
    /// A search's terminology modifier cannot be answered from the CodeSystems and ValueSets
    /// stored here (`search::terminology`).
    #[error("{0}")]
    Terminology(String),
}

/// The interaction that produced a version (`Bundle.entry.request.method` in a history Bundle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn parse(s: &str) -> Method {
        match s {
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Put,
        }
    }
}

/// A page of a search as the store read it.
#[derive(Debug, Default)]
pub struct Page {
    pub versions: Vec<Version>,
    /// All the matches, when the query counted them.
    pub total: Option<i64>,
    /// Per version, its sort values (empty without `_sort`).
    pub keys: Vec<Vec<Option<query::Bind>>>,
}

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct Version {
    pub ty: String,
    pub id: String,
    pub version_id: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated: i64,
    pub method: Method,
    /// The resource JSON with `id` and `meta` stamped; `None` for a delete.
    pub content: Option<String>,
}

impl Version {
    pub fn is_deleted(&self) -> bool {
        self.content.is_none()
    }
}

/// What a write asks for.
#[derive(Debug)]
pub enum Write<'a> {
    /// A new resource with a server-assigned id (POST).
    Create { resource: &'a mut Value },
    /// Create-or-update at a known id (PUT, PATCH). `if_match` makes it version-aware.
    Update {
        resource: &'a mut Value,
        if_match: Option<i64>,
        method: Method,
    },
    /// Delete (a no-op when the resource is missing or already deleted).
    Delete { if_match: Option<i64> },
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct Written {
    pub ty: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: i64,
    /// The stored JSON; `None` for deletes.
    pub content: Option<String>,
    /// True when this write created the resource (201 rather than 200).
    pub created: bool,
    /// False when a delete found nothing to delete.
    pub changed: bool,
}

/// Which versions a history interaction lists (https://hl7.org/fhir/R4/http.html#history).
#[derive(Debug, Clone, Copy)]
pub enum HistoryScope<'a> {
    System,
    Type(ResourceType),
    Instance(ResourceType, &'a ResourceId),
}

#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Only versions updated after this instant (`_since`), microseconds.
    pub since: Option<i64>,
    /// Only versions updated at or before this instant (`_at` / the pinned end of a page set).
    pub until: Option<i64>,
    /// With `_at`: only versions still current at this instant or later, i.e. whose successor
    /// (if any) came after it (http.html#history).
    pub at_start: Option<i64>,
    pub count: usize,
    pub offset: usize,
    /// Only resources these organizations own now (the caller's tenancy, `auth::tenancy`);
    /// `None` for all. Organizations are owned by themselves.
    pub owners: Option<Vec<String>>,
}

/// The application's store: PostgreSQL in production, SQLite as the embedded default.
#[derive(Clone)]
pub enum Store {
    Pg {
        pool: PgPool,
        /// For statements with [`query::Sql::generic`] plans only.
        generic: PgPool,
        /// Plain creates, written in batches by [`create_batcher`].
        creates: tokio::sync::mpsc::Sender<CreateJob>,
        /// Point reads of current versions, answered in batches by [`batch::read_batcher`].
        reads: tokio::sync::mpsc::Sender<batch::ReadJob>,
        /// The audit trail's writer (`crate::audit`): a connection of its own, so that its COPYs
        /// never wait for or hold up a request's connection, and named (`application_name`
        /// `vitalbridge-audit`) so that its share of PostgreSQL can be told apart.
        audit: PgPool,
    },
    Sqlite {
        /// Readers run concurrently (WAL mode).
        read: SqlitePool,
        /// SQLite admits one writer at a time; a single connection serialises writers in-process
        /// instead of letting them fail with SQLITE_BUSY.
        write: SqlitePool,
        /// WAL checkpoints, in the background.
        maint: SqlitePool,
    },
}

/// A write transaction. Dropping it without [`StoreTx::commit`] rolls everything back.
pub enum StoreTx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Connection settings for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 16,
        }
    }
}

impl Store {
    /// Opens `url` (`postgres://…` or `sqlite://…`). For SQLite the file and its folder are created.
    pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool_options = || {
                PgPoolOptions::new()
                    .max_connections(opts.max_connections)
                    // sqlx pings every connection it hands out by default: one extra round trip
                    // per request. A dead connection fails its real query instead and is discarded.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
            };
            let pool = pool_options().connect_with(options.clone()).await?;
            // Searches whose plan does not depend on their values (query::Sql::generic) run as
            // cached statements planned once per connection: planning took as long as running
            // them. PostgreSQL's `auto` mode kept re-planning them, so these connections force
            // the generic plan (https://www.postgresql.org/docs/15/runtime-config-query.html#GUC-PLAN-CACHE_MODE).
            let generic = pool_options().min_connections(0).connect_lazy_with(
                options
                    .clone()
                    .options([("plan_cache_mode", "force_generic_plan")]),
            );
            let (creates, jobs) = tokio::sync::mpsc::channel(1024);
            let jobs = std::sync::Arc::new(tokio::sync::Mutex::new(jobs));
            for _ in 0..CREATE_BATCHERS {
                tokio::spawn(create_batcher(pool.clone(), jobs.clone()));
            }
            let audit = PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options.clone().application_name("vitalbridge-audit"));
            let (reads, read_jobs) = tokio::sync::mpsc::channel(1024);
            let read_jobs = std::sync::Arc::new(tokio::sync::Mutex::new(read_jobs));
            for _ in 0..batch::READ_BATCHERS {
                tokio::spawn(batch::read_batcher(pool.clone(), read_jobs.clone()));
            }
            Ok(Store::Pg {
                pool,
                generic,
                creates,
                reads,
                audit,
            })
        } else {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL never loses a committed transaction when the process dies
                // (kill -9); only an OS crash or power loss can take back the last commits.
                // https://www.sqlite.org/pragma.html#pragma_synchronous
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                // SQLite's default page cache (2 MiB per connection), not a large one: a
                // connection drops its whole cache whenever another connection has committed
                // (https://www.sqlite.org/wal.html#concurrency), and every commit truncates the
                // writer's, each time walking the cache's hash table. With 64 MiB caches that
                // walk took a fifth of the writer's time under creates, and reads ran at 12,300
                // req/s instead of 17,900 (perf, scripts/bench.sh, 2026-12-02). The operating
                // system's page cache keeps the file's pages across both.
                .foreign_keys(true);
            if let Some(parent) = std::path::Path::new(options.get_filename()).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
            }
            // The writer never checkpoints the WAL itself: an automatic checkpoint runs (and
            // fsyncs) inside the commit that crosses the threshold, stalling every writer queued
            // behind it. A background connection checkpoints instead (see `checkpointer`).
            // https://www.sqlite.org/wal.html#automatic_checkpoint
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
                .await?;
            let maint = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            tokio::spawn(checkpointer(maint.clone()));
            // A read-only connection cannot be opened before the file exists; the writer made it.
            let read = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.clamp(1, 8))
                .test_before_acquire(false)
                .connect_with(options.read_only(true))
                .await?;
            Ok(Store::Sqlite { read, write, maint })
        }
    }

    /// Applies the migrations of `migrations/{postgres,sqlite}` that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Pg { pool, .. } => sqlx::migrate!("migrations/postgres").run(pool).await?,
            Store::Sqlite { write, .. } => sqlx::migrate!("migrations/sqlite").run(write).await?,
        }
        Ok(())
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        match self {
            Store::Pg { pool, .. } => sqlx::query("select 1").execute(pool).await.is_ok(),
            Store::Sqlite { read, .. } => sqlx::query("select 1").execute(read).await.is_ok(),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Pg { .. } => "postgresql",
            Store::Sqlite { .. } => "sqlite",
        }
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        Ok(match self {
            Store::Pg { pool, .. } => StoreTx::Pg(pool.begin().await?),
            // IMMEDIATE takes the write lock up front, so a transaction never fails half-way
            // when it upgrades from reading to writing. https://www.sqlite.org/lang_transaction.html
            Store::Sqlite { write, .. } => {
                StoreTx::Sqlite(write.begin_with("BEGIN IMMEDIATE").await?)
            }
        })
    }

    pub async fn close(&self) {
        match self {
            Store::Pg {
                pool,
                generic,
                audit,
                ..
            } => {
                generic.close().await;
                audit.close().await;
                pool.close().await
            }
            Store::Sqlite { read, write, maint } => {
                read.close().await;
                write.close().await;
                // A last checkpoint folds the WAL into the database file.
                let _ = sqlx::query("pragma wal_checkpoint(TRUNCATE)")
                    .execute(maint)
                    .await;
                maint.close().await;
            }
        }
    }

    /// The current version (possibly a delete), or `None` if the resource never existed.
    pub async fn read(
        &self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<Version>, StoreError> {
        match self {
            Store::Pg { reads, .. } => {
                let (done, answer) = tokio::sync::oneshot::channel();
                let job = batch::ReadJob {
                    ty,
                    id: id.clone(),
                    done,
                };
                reads.send(job).await.map_err(|_| closed())?;
                answer.await.map_err(|_| closed())?
            }
            Store::Sqlite { read, .. } => sqlite::read(&mut *read.acquire().await?, ty, id).await,
        }
    }

    pub async fn vread(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        version_id: i64,
    ) -> Result<Option<Version>, StoreError> {
        match self {
            Store::Pg { pool, .. } => {
                pg::vread(&mut *pool.acquire().await?, ty, id, version_id).await
            }
            Store::Sqlite { read, .. } => {
                sqlite::vread(&mut *read.acquire().await?, ty, id, version_id).await
            }
        }
    }

    /// Versions newest first, and the number of versions the query matches in all.
    pub async fn history(
        &self,
        scope: HistoryScope<'_>,
        q: &HistoryQuery,
    ) -> Result<(Vec<Version>, i64), StoreError> {
        match self {
            Store::Pg { pool, .. } => pg::history(&mut *pool.acquire().await?, scope, q).await,
            Store::Sqlite { read, .. } => {
                sqlite::history(&mut *read.acquire().await?, scope, q).await
            }
        }
    }

    /// A reader for search queries outside any transaction.
    pub fn reader(&self) -> Db<'_> {
        Db::Store(self)
    }
}

/// Where a search runs: on the pool (each query on a connection of its own) or inside a write
/// transaction (conditional interactions and Bundle entries see the transaction's own writes).
pub enum Db<'a> {
    Store(&'a Store),
    Tx(&'a mut StoreTx),
}

macro_rules! on_db {
    ($db:expr, $f:ident, $sql:expr $(, $extra:expr)*) => {
        match $db {
            Db::Store(Store::Pg { pool, generic, .. }) => {
                let pool = if $sql.generic { generic } else { pool };
                pg::$f(&mut *pool.acquire().await?, $sql $(, $extra)*).await
            }
            Db::Store(Store::Sqlite { read, .. }) => {
                sqlite::$f(&mut *read.acquire().await?, $sql $(, $extra)*).await
            }
            Db::Tx(StoreTx::Pg(tx)) => pg::$f(tx, $sql $(, $extra)*).await,
            Db::Tx(StoreTx::Sqlite(tx)) => sqlite::$f(tx, $sql $(, $extra)*).await,
        }
    };
}

impl Db<'_> {
    /// Runs a query built by [`query`] that selects [`query::VERSION_COLUMNS`].
    pub async fn versions(&mut self, sql: &query::Sql) -> Result<Vec<Version>, StoreError> {
        on_db!(self, fetch_versions, sql)
    }

    /// Like [`Db::versions`], for a page of a search ([`query::page_sql_total`]): the
    /// `total` column's value from the first row, if any, and each row's sort values
    /// `k0, k1, …` of the given kinds.
    pub async fn page(
        &mut self,
        sql: &query::Sql,
        kinds: &[query::KeyKind],
    ) -> Result<Page, StoreError> {
        on_db!(self, fetch_page, sql, kinds)
    }

    /// Runs a query built by [`query`] that selects two text columns.
    pub async fn pairs(&mut self, sql: &query::Sql) -> Result<Vec<(String, String)>, StoreError> {
        on_db!(self, fetch_pairs, sql)
    }

    /// Runs a query built by [`query`] that selects one integer.
    pub async fn count(&mut self, sql: &query::Sql) -> Result<i64, StoreError> {
        on_db!(self, fetch_count, sql)
    }
}

impl Store {
    /// Number of current (not deleted) resources, for `vitalbridge reindex`.
    pub async fn count_current(&self) -> Result<i64, StoreError> {
        let sql = "select count(*) from resource where deleted = false";
        Ok(match self {
            Store::Pg { pool, .. } => sqlx::query_scalar(sql).fetch_one(pool).await?,
            Store::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_one(read).await?,
        })
    }

    /// The next `limit` current resources after `after` in (type, id) order.
    pub async fn scan_current(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let mut sql = query::Sql::default();
        sql.push(
            "select h.res_type, h.res_id, h.version_id, h.last_updated, h.method, h.content \
             from resource r join resource_history h on h.res_type = r.res_type and h.res_id = r.res_id \
             and h.version_id = r.version_id where r.deleted = false",
        );
        if let Some((ty, id)) = after {
            sql.push(" and (r.res_type, r.res_id) > (");
            sql.text(ty).push(", ");
            sql.text(id).push(")");
        }
        sql.push(" order by r.res_type, r.res_id limit ");
        sql.bind(query::Bind::Int(limit as i64));
        self.reader().versions(&sql).await
    }

    /// After a full reindex: PostgreSQL keeps the deleted copy of every index row until it is
    /// vacuumed, and index-only scans visit the heap for every row of a page not yet marked
    /// all-visible (searches ran at three quarters of their speed after reindexing 1M
    /// resources). Vacuums the index tables and refreshes the planner's statistics; SQLite
    /// only refreshes its statistics.
    pub async fn tidy_index(&self) -> Result<(), StoreError> {
        match self {
            Store::Pg { pool, .. } => {
                let tables: Vec<&str> = INDEX_COLUMNS.iter().map(|(t, _)| *t).collect();
                let sql = format!("vacuum analyze {}", tables.join(", "));
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
            }
            Store::Sqlite { write, .. } => {
                sqlx::query("analyze").execute(write).await?;
            }
        }
        Ok(())
    }

    /// Rebuilds the search index rows of these versions from their JSON, in one transaction.
    pub async fn reindex(&self, versions: &[Version]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for v in versions {
            let Some(content) = &v.content else { continue };
            let resource: Value = serde_json::from_str(content)?;
            let row = VersionRow {
                ty: &v.ty,
                id: &v.id,
                version_id: v.version_id,
                last_updated: v.last_updated,
                created: false,
                method: v.method.as_str(),
                content: None,
                index: crate::search::index::rows(&resource),
                index_only: true,
            };
            match &mut tx {
                StoreTx::Pg(tx) => apply_pg(tx, &row).await?,
                StoreTx::Sqlite(tx) => apply_sqlite_in_tx(tx, &row).await?,
            }
        }
        tx.commit().await
    }
}

/// Checkpoints the SQLite WAL in the background, off the writers' path, until the store closes. A PASSIVE checkpoint
/// never blocks readers or the writer (https://www.sqlite.org/c3ref/wal_checkpoint_v2.html).
async fn checkpointer(maint: SqlitePool) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if maint.is_closed() {
            break;
        }
        match sqlx::query("pragma wal_checkpoint(PASSIVE)")
            .execute(&maint)
            .await
        {
            // The store closed between the check above and the checkpoint: shutting down.
            Err(sqlx::Error::PoolClosed) => break,
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying"),
            Ok(_) => {}
        }
    }
}

impl StoreTx {
    /// The one write path (DESIGN.md rule 1). `resource` must already be validated by the caller
    /// (the `fhir` room); this stamps `id` and `meta`, and writes version, history, search index
    /// and change log rows in this transaction.
    pub async fn write(
        &mut self,
        ty: ResourceType,
        id: Option<&ResourceId>,
        write: Write<'_>,
    ) -> Result<Written, StoreError> {
        match self {
            StoreTx::Pg(tx) => pg::write(tx, ty, id, write).await,
            StoreTx::Sqlite(tx) => sqlite::write(tx, ty, id, write).await,
        }
    }

    /// The current version, read inside this transaction (sees its own writes).
    pub async fn read(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<Version>, StoreError> {
        match self {
            StoreTx::Pg(tx) => pg::read(tx, ty, id).await,
            StoreTx::Sqlite(tx) => sqlite::read(tx, ty, id).await,
        }
    }

    pub async fn vread(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        version_id: i64,
    ) -> Result<Option<Version>, StoreError> {
        match self {
            StoreTx::Pg(tx) => pg::vread(tx, ty, id, version_id).await,
            StoreTx::Sqlite(tx) => sqlite::vread(tx, ty, id, version_id).await,
        }
    }

    /// A reader for search queries inside this transaction.
    pub fn reader(&mut self) -> Db<'_> {
        Db::Tx(self)
    }

    /// Locks the resource row until the transaction ends (read-modify-write: PATCH), returning
    /// its current version number, or `None` when it does not exist.
    pub async fn lock_resource(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<i64>, StoreError> {
        Ok(match self {
            StoreTx::Pg(tx) => pg::lock_current(tx, ty, id).await?,
            StoreTx::Sqlite(tx) => sqlite::lock_current(tx, ty, id).await?,
        }
        .map(|(version, _, _)| version))
    }

    /// Serialises conditional interactions on the same criteria across concurrent transactions,
    /// so two `If-None-Exist` creates cannot both create. SQLite transactions are serial anyway.
    pub async fn lock_key(&mut self, key: &str) -> Result<(), StoreError> {
        if let StoreTx::Pg(tx) = self {
            sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            StoreTx::Pg(tx) => tx.commit().await?,
            StoreTx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta`.
fn stamp(resource: &mut Value, id: &str, version_id: i64, last_updated: i64) {
    let Value::Object(map) = resource else { return };
    map.insert("id".into(), Value::String(id.to_owned()));
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    if let Value::Object(meta) = meta {
        meta.insert("versionId".into(), Value::String(version_id.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(format_instant(last_updated)),
        );
    }
    // `id` first, then `meta`, as the JSON examples of the specification order them.
    let mut ordered = serde_json::Map::with_capacity(map.len());
    for key in ["resourceType", "id", "meta"] {
        if let Some(v) = map.shift_remove(key) {
            ordered.insert(key.into(), v);
        }
    }
    ordered.append(map);
    *map = ordered;
}

/// Instantiates the store functions for one sqlx driver.
macro_rules! backend {
    ($module:ident, $db:ty, $for_update:expr, $apply:path) => {
        mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Row};

            type Conn = <$db as sqlx::Database>::Connection;

            pub fn version_from_row(row: &<$db as sqlx::Database>::Row) -> Result<Version, sqlx::Error> {
                Ok(Version {
                    ty: row.try_get("res_type")?,
                    id: row.try_get("res_id")?,
                    version_id: row.try_get("version_id")?,
                    last_updated: row.try_get("last_updated")?,
                    method: Method::parse(row.try_get::<&str, _>("method")?),
                    content: row.try_get("content")?,
                })
            }

            pub async fn read(conn: &mut Conn, ty: ResourceType, id: &ResourceId) -> Result<Option<Version>, StoreError> {
                let row = sqlx::query(
                    "select res_type, res_id, version_id, last_updated, method, content from resource_history \
                     where res_type = $1 and res_id = $2 order by version_id desc limit 1",
                )
                .bind(ty.as_str())
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.as_ref().map(version_from_row).transpose()?)
            }

            pub async fn vread(
                conn: &mut Conn,
                ty: ResourceType,
                id: &ResourceId,
                version_id: i64,
            ) -> Result<Option<Version>, StoreError> {
                let row = sqlx::query(
                    "select res_type, res_id, version_id, last_updated, method, content from resource_history \
                     where res_type = $1 and res_id = $2 and version_id = $3",
                )
                .bind(ty.as_str())
                .bind(id.as_str())
                .bind(version_id)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.as_ref().map(version_from_row).transpose()?)
            }

            fn push_history_filter(qb: &mut QueryBuilder<$db>, scope: HistoryScope<'_>, q: &HistoryQuery) {
                qb.push(" from resource_history where 1 = 1");
                match scope {
                    HistoryScope::System => {}
                    HistoryScope::Type(ty) => {
                        qb.push(" and res_type = ").push_bind(ty.as_str());
                    }
                    HistoryScope::Instance(ty, id) => {
                        qb.push(" and res_type = ").push_bind(ty.as_str());
                        qb.push(" and res_id = ").push_bind(id.as_str());
                    }
                }
                if let Some(since) = q.since {
                    qb.push(" and last_updated > ").push_bind(since);
                }
                if let Some(until) = q.until {
                    qb.push(" and last_updated <= ").push_bind(until);
                }
                if let Some(orgs) = &q.owners {
                    qb.push(" and ((res_type = 'Organization' and res_id in (");
                    let mut list = qb.separated(", ");
                    for o in orgs {
                        list.push_bind(o.clone());
                    }
                    if orgs.is_empty() {
                        list.push("null");
                    }
                    qb.push(")) or exists (select 1 from search_token o where o.res_type = resource_history.res_type \
                              and o.res_id = resource_history.res_id and o.param = '_tag' and o.system = ")
                        .push_bind(crate::auth::tenancy::OWNER_SYSTEM)
                        .push(" and o.code in (");
                    let mut list = qb.separated(", ");
                    for o in orgs {
                        list.push_bind(o.clone());
                    }
                    if orgs.is_empty() {
                        list.push("null");
                    }
                    qb.push(")))");
                }
                if let Some(start) = q.at_start {
                    qb.push(
                        " and not exists (select 1 from resource_history n where n.res_type = resource_history.res_type \
                          and n.res_id = resource_history.res_id and n.version_id = resource_history.version_id + 1 \
                          and n.last_updated <= ",
                    )
                    .push_bind(start)
                    .push(")");
                }
            }

            pub async fn history(
                conn: &mut Conn,
                scope: HistoryScope<'_>,
                q: &HistoryQuery,
            ) -> Result<(Vec<Version>, i64), StoreError> {
                let mut qb = QueryBuilder::<$db>::new("select count(*)");
                push_history_filter(&mut qb, scope, q);
                let total: i64 = qb.build().fetch_one(&mut *conn).await?.try_get(0)?;

                let mut qb = QueryBuilder::<$db>::new(
                    "select res_type, res_id, version_id, last_updated, method, content",
                );
                push_history_filter(&mut qb, scope, q);
                qb.push(" order by last_updated desc, res_type, res_id, version_id desc limit ")
                    .push_bind(q.count as i64)
                    .push(" offset ")
                    .push_bind(q.offset as i64);
                let rows = qb.build().fetch_all(&mut *conn).await?;
                let versions = rows.iter().map(version_from_row).collect::<Result<_, _>>()?;
                Ok((versions, total))
            }

            fn bind_all<'q>(
                sql: &'q query::Sql,
            ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments> {
                // Not a cached prepared statement unless the plan cannot depend on the values
                // (query::Sql::generic): PostgreSQL then plans each search with its actual
                // values. A cached statement switches to a generic plan after five runs, which
                // cannot tell one patient's 1,000 readings from a code's 250,000 and may drive
                // from the wrong index (https://www.postgresql.org/docs/current/sql-prepare.html#SQL-PREPARE-NOTES).
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.text.as_str())).persistent(sql.generic);
                for b in &sql.binds {
                    q = match b {
                        query::Bind::Text(s) => q.bind(s.as_str()),
                        query::Bind::Int(i) => q.bind(*i),
                        query::Bind::Float(f) => q.bind(*f),
                    };
                }
                q
            }

            pub async fn fetch_versions(conn: &mut Conn, sql: &query::Sql) -> Result<Vec<Version>, StoreError> {
                let rows = bind_all(sql).fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(version_from_row).collect::<Result<_, _>>()?)
            }

            pub async fn fetch_page(
                conn: &mut Conn,
                sql: &query::Sql,
                kinds: &[query::KeyKind],
            ) -> Result<Page, StoreError> {
                let rows = bind_all(sql).fetch_all(&mut *conn).await?;
                let total = match rows.first() {
                    Some(r) => r.try_get::<i64, _>("total").ok(),
                    None => None,
                };
                let versions = rows.iter().map(version_from_row).collect::<Result<_, _>>()?;
                let keys = rows
                    .iter()
                    .map(|r| {
                        kinds
                            .iter()
                            .enumerate()
                            .map(|(i, kind)| {
                                let col = format!("k{i}");
                                Ok(match kind {
                                    query::KeyKind::Text => r
                                        .try_get::<Option<String>, _>(col.as_str())?
                                        .map(query::Bind::Text),
                                    query::KeyKind::Int => r
                                        .try_get::<Option<i64>, _>(col.as_str())?
                                        .map(query::Bind::Int),
                                    // SQLite may hand back a whole number as an integer.
                                    query::KeyKind::Float => match r.try_get::<Option<f64>, _>(col.as_str()) {
                                        Ok(v) => v,
                                        Err(_) => r.try_get::<Option<i64>, _>(col.as_str())?.map(|i| i as f64),
                                    }
                                    .map(query::Bind::Float),
                                })
                            })
                            .collect::<Result<Vec<_>, sqlx::Error>>()
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Page { versions, total, keys })
            }

            pub async fn fetch_pairs(conn: &mut Conn, sql: &query::Sql) -> Result<Vec<(String, String)>, StoreError> {
                let rows = bind_all(sql).fetch_all(&mut *conn).await?;
                Ok(rows
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?)
            }

            pub async fn fetch_count(conn: &mut Conn, sql: &query::Sql) -> Result<i64, StoreError> {
                Ok(bind_all(sql).fetch_one(&mut *conn).await?.try_get(0)?)
            }

            pub async fn write(
                tx: &mut sqlx::Transaction<'static, $db>,
                ty: ResourceType,
                id: Option<&ResourceId>,
                write: Write<'_>,
            ) -> Result<Written, StoreError> {
                let conn: &mut Conn = &mut *tx;
                let fresh;
                let id = match (id, &write) {
                    (Some(id), _) => id,
                    (None, _) => {
                        fresh = ResourceId::generate();
                        &fresh
                    }
                };
                // Lock the resource row so that concurrent writers of this resource queue up
                // behind each other and each sees the version the previous one committed.
                let current = match &write {
                    Write::Create { .. } => None,
                    _ => lock_current(conn, ty, id).await?,
                };
                match plan(ty, id, current, write)? {
                    Planned::Noop(w) => Ok(w),
                    Planned::Write { written, method, resource } => {
                        $apply(conn, &version_row(&written, method, resource)).await?;
                        Ok(written)
                    }
                }
            }

            pub async fn lock_current(
                conn: &mut Conn,
                ty: ResourceType,
                id: &ResourceId,
            ) -> Result<Option<(i64, i64, bool)>, StoreError> {
                let sql = concat!(
                    "select version_id, last_updated, deleted from resource where res_type = $1 and res_id = $2",
                    $for_update
                );
                let row = sqlx::query(sql)
                    .bind(ty.as_str())
                    .bind(id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(match row {
                    Some(row) => Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)),
                    None => None,
                })
            }
        }
    };
}

backend!(pg, sqlx::Postgres, " for update", apply_pg);
// SQLite has no row locks; its write transactions (BEGIN IMMEDIATE) are serial.
backend!(sqlite, sqlx::Sqlite, "", apply_sqlite_in_tx);

/// What a write will do, decided from the resource's current state; no I/O.
enum Planned<'a> {
    /// Nothing to write (a delete of something missing or already deleted).
    Noop(Written),
    /// A new version; `resource` is the stamped resource for the search index.
    Write {
        written: Written,
        method: Method,
        resource: Option<&'a Value>,
    },
}

/// Checks `If-Match`, assigns the next version and its time, and stamps `id` and `meta`.
fn plan<'a>(
    ty: ResourceType,
    id: &ResourceId,
    current: Option<(i64, i64, bool)>,
    write: Write<'a>,
) -> Result<Planned<'a>, StoreError> {
    let (if_match, method) = match &write {
        Write::Create { .. } => (None, Method::Post),
        Write::Update {
            if_match, method, ..
        } => (*if_match, *method),
        Write::Delete { if_match } => (*if_match, Method::Delete),
    };
    let current_version = current.map(|c| c.0);
    if let Some(expected) = if_match
        && current_version != Some(expected)
    {
        return Err(StoreError::VersionConflict {
            expected,
            current: current_version,
        });
    }
    if let Write::Delete { .. } = write
        && current.is_none_or(|(_, _, deleted)| deleted)
    {
        // Deleting what is not there succeeds without a new version (http.html#delete).
        return Ok(Planned::Noop(Written {
            ty,
            id: id.as_str().to_owned(),
            version_id: current_version.unwrap_or(0),
            last_updated: current.map(|c| c.1).unwrap_or(0),
            content: None,
            created: false,
            changed: false,
        }));
    }
    let version_id = current_version.unwrap_or(0) + 1;
    // lastUpdated never goes backwards within one resource, even if the clock does.
    let last_updated = now_micros().max(current.map(|c| c.1 + 1).unwrap_or(0));
    let (content, resource) = match write {
        Write::Create { resource } | Write::Update { resource, .. } => {
            stamp(resource, id.as_str(), version_id, last_updated);
            (Some(serde_json::to_string(&*resource)?), Some(&*resource))
        }
        Write::Delete { .. } => (None, None),
    };
    let written = Written {
        ty,
        id: id.as_str().to_owned(),
        version_id,
        last_updated,
        content,
        created: current.is_none(),
        changed: true,
    };
    Ok(Planned::Write {
        written,
        method,
        resource,
    })
}

fn version_row<'b>(w: &'b Written, method: Method, resource: Option<&'b Value>) -> VersionRow<'b> {
    VersionRow {
        ty: w.ty.as_str(),
        id: &w.id,
        version_id: w.version_id,
        last_updated: w.last_updated,
        created: w.created,
        method: method.as_str(),
        content: w.content.as_deref(),
        index: resource.map(crate::search::index::rows).unwrap_or_default(),
        index_only: false,
    }
}

impl Store {
    /// A single create, update or delete in its own transaction, in as few round trips as the
    /// backend allows: a plain create is one statement on either backend; on SQLite an update is
    /// two calls into its worker thread instead of four, which matters because every write holds
    /// the one writer connection for all of them.
    ///
    /// It runs in a task of its own, so a client that disconnects mid-way cannot cancel it
    /// between BEGIN and COMMIT. `resource` is `None` for a delete.
    pub async fn write_one(
        &self,
        ty: ResourceType,
        id: Option<ResourceId>,
        resource: Option<Value>,
        if_match: Option<i64>,
        method: Method,
    ) -> Result<Written, StoreError> {
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut resource = resource;
            let id = id.unwrap_or_else(ResourceId::generate);
            match &store {
                Store::Pg { pool, creates, .. } => {
                    let write = make_write(method, resource.as_mut(), if_match);
                    if let Write::Create { .. } = write {
                        // One statement is one transaction, shared with the creates that
                        // arrive meanwhile (create_batcher).
                        return match plan(ty, &id, None, write)? {
                            Planned::Write {
                                written, resource, ..
                            } => {
                                let (done, outcome) = tokio::sync::oneshot::channel();
                                let job = CreateJob {
                                    ty: written.ty.as_str(),
                                    id: written.id.clone(),
                                    version_id: written.version_id,
                                    last_updated: written.last_updated,
                                    content: written.content.clone(),
                                    index: resource
                                        .map(crate::search::index::rows)
                                        .unwrap_or_default(),
                                    done,
                                };
                                creates.send(job).await.map_err(|_| closed())?;
                                outcome.await.map_err(|_| closed())??;
                                Ok(written)
                            }
                            Planned::Noop(w) => Ok(w),
                        };
                    }
                    let mut tx = pool.begin().await?;
                    let w = pg::write(&mut tx, ty, Some(&id), write).await?;
                    tx.commit().await?;
                    Ok(w)
                }
                Store::Sqlite {
                    read, write: pool, ..
                } => {
                    if method != Method::Post {
                        // Optimistic: plan on the current version as a reader sees it, then write
                        // in one call guarded by that version. Only if another write got in
                        // between does it take the locking path below.
                        let current = {
                            let mut conn = read.acquire().await?;
                            // SQLite has no row locks, so this is a plain read on a reader.
                            sqlite::lock_current(&mut conn, ty, &id).await?
                        };
                        let write = make_write(method, resource.as_mut(), if_match);
                        match plan(ty, &id, current, write)? {
                            Planned::Noop(w) => return Ok(w),
                            Planned::Write {
                                written,
                                method,
                                resource,
                            } => {
                                let row = version_row(&written, method, resource);
                                match sqlite_guarded(pool, &row).await {
                                    Ok(true) => return Ok(written),
                                    Ok(false) => {}
                                    Err(e) => return Err(e),
                                }
                            }
                        }
                    }
                    let write = make_write(method, resource.as_mut(), if_match);
                    use futures::FutureExt;
                    let mut conn = pool.acquire().await?;
                    let attempt =
                        std::panic::AssertUnwindSafe(sqlite_write_one(&mut conn, ty, &id, write))
                            .catch_unwind()
                            .await;
                    finish_sqlite(&mut conn, attempt).await
                }
            }
        });
        match task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Db(sqlx::Error::Protocol(format!(
                "write task failed: {e}"
            )))),
        }
    }
}

fn make_write(method: Method, resource: Option<&mut Value>, if_match: Option<i64>) -> Write<'_> {
    match (method, resource) {
        (Method::Post, Some(r)) => Write::Create { resource: r },
        (Method::Delete, _) | (_, None) => Write::Delete { if_match },
        (m, Some(r)) => Write::Update {
            resource: r,
            if_match,
            method: m,
        },
    }
}

/// Ends a raw SQLite write transaction sqlx does not track: after an error or a panic it is
/// rolled back, and a connection whose state is unknown is closed rather than handed out again.
async fn finish_sqlite<T>(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    attempt: std::thread::Result<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let Ok(result) = attempt else {
        conn.close_on_drop();
        return Err(StoreError::Db(sqlx::Error::Protocol(
            "write panicked".into(),
        )));
    };
    if result.is_err() && sqlx::query("rollback").execute(&mut **conn).await.is_err() {
        conn.close_on_drop();
    }
    result
}

/// One call: BEGIN IMMEDIATE, the version's rows guarded by the planned-on version, COMMIT.
/// `Ok(false)` when another write changed the resource first (nothing was written).
async fn sqlite_guarded(pool: &SqlitePool, row: &VersionRow<'_>) -> Result<bool, StoreError> {
    use futures::FutureExt;
    let mut conn = pool.acquire().await?;
    let attempt = std::panic::AssertUnwindSafe(apply_sqlite(
        &mut conn,
        row,
        "begin immediate;",
        "commit;",
        true,
    ))
    .catch_unwind()
    .await;
    match finish_sqlite(&mut conn, attempt).await {
        Ok(()) => Ok(true),
        Err(StoreError::Db(sqlx::Error::Database(e)))
            if matches!(
                e.kind(),
                sqlx::error::ErrorKind::NotNullViolation | sqlx::error::ErrorKind::UniqueViolation
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// SQLite: `BEGIN IMMEDIATE` travels with the first statement and `COMMIT` with the last.
async fn sqlite_write_one(
    conn: &mut sqlx::SqliteConnection,
    ty: ResourceType,
    id: &ResourceId,
    write: Write<'_>,
) -> Result<Written, StoreError> {
    use sqlx::Row;
    let begun = !matches!(write, Write::Create { .. });
    let current = if begun {
        let row = sqlx::query(
            "begin immediate; select version_id, last_updated, deleted from resource where res_type = $1 and res_id = $2",
        )
        .bind(ty.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        }
    } else {
        None
    };
    match plan(ty, id, current, write)? {
        Planned::Noop(w) => {
            sqlx::query("commit").execute(&mut *conn).await?;
            Ok(w)
        }
        Planned::Write {
            written,
            method,
            resource,
        } => {
            let prefix = if begun { "" } else { "begin immediate;" };
            apply_sqlite(
                conn,
                &version_row(&written, method, resource),
                prefix,
                "commit;",
                false,
            )
            .await?;
            Ok(written)
        }
    }
}

/// The rows one new version writes: `resource` (insert or move the pointer), `resource_history`,
/// `search_token` (replaced) and `change_log`.
struct VersionRow<'a> {
    ty: &'a str,
    id: &'a str,
    version_id: i64,
    last_updated: i64,
    created: bool,
    method: &'static str,
    content: Option<&'a str>,
    /// The search index rows of the new version (none for a delete).
    index: IndexRows,
    /// Only replace the index rows (`vitalbridge reindex`); the version is already stored.
    index_only: bool,
}

/// PostgreSQL types of [`INDEX_COLUMNS`], for the `unnest` arrays.
const PG_INDEX_TYPES: [&[&str]; 8] = [
    &["text", "text", "text", "text"],
    &["text", "text", "text"],
    &["text", "int8", "int8"],
    &[
        "text", "text", "text", "text", "int8", "int8", "text", "text", "bool", "text",
    ],
    &["text", "float8", "text", "text", "float8", "text"],
    &["text", "float8"],
    &["text", "text"],
    &[
        "text", "text", "text", "text", "text", "float8", "float8", "float8", "text", "float8",
    ],
];

/// The search index tables (migrations `0002_search.sql`), whose rows a write replaces, and
/// their columns after (res_type, res_id) in the order of [`IndexRows`]' tuples.
const INDEX_COLUMNS: &[(&str, &str)] = &[
    ("search_token", "param, system, code, text"),
    ("search_string", "param, norm, exact"),
    ("search_date", "param, lo, hi"),
    (
        "search_reference",
        "param, target_type, target_id, url, date_lo, date_hi, code_system, code, date_exact, \
         categories",
    ),
    (
        "search_quantity",
        "param, value, system, code, cvalue, ccode",
    ),
    ("search_number", "param, value"),
    ("search_uri", "param, value"),
    (
        "search_composite",
        "param, c1_system, c1_code, c2_system, c2_code, c2_lo, c2_hi, c2_cvalue, c2_ccode, c3",
    ),
];

/// The column (with its leading comma) and value under which an index table's rows carry the
/// version they index, `$3` in both writers: only `search_reference`, whose rows drive the
/// patient searches and so let the page read `resource_history` without a `resource` lookup
/// per match (0005_reference_carries.sql).
fn version_column(table: &str) -> (&'static str, &'static str) {
    if table == "search_reference" {
        (", version_id", ", $3")
    } else {
        ("", "")
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Which index tables any of `rows` has rows for, in [`INDEX_COLUMNS`] order.
fn present_tables(rows: &[VersionRow<'_>]) -> [bool; 8] {
    let mut p = [false; 8];
    for r in rows {
        let ix = &r.index;
        let has = [
            !ix.tokens.is_empty(),
            !ix.strings.is_empty(),
            !ix.dates.is_empty(),
            !ix.references.is_empty(),
            !ix.quantities.is_empty(),
            !ix.numbers.is_empty(),
            !ix.uris.is_empty(),
            !ix.composites.is_empty(),
        ];
        for (a, b) in p.iter_mut().zip(has) {
            *a |= b;
        }
    }
    p
}

/// Binds the index rows of `rows` as parallel arrays, table by table for the `present` ones.
/// With `keys`, each table's arrays start with the rows' resource type and id (and, for
/// `search_reference`, version), for a statement that writes several resources.
fn bind_index<'q>(
    mut q: PgQuery<'q>,
    rows: &'q [VersionRow<'q>],
    present: [bool; 8],
    keys: bool,
) -> PgQuery<'q> {
    /// One column of one table over all `rows`.
    fn col<'a, T: 'a, U>(
        rows: &'a [VersionRow<'a>],
        table: impl Fn(&'a IndexRows) -> &'a [T],
        f: impl Fn(&'a VersionRow<'a>, &'a T) -> U,
    ) -> Vec<U> {
        let f = &f;
        rows.iter()
            .flat_map(|r| table(&r.index).iter().map(move |t| f(r, t)))
            .collect()
    }
    macro_rules! table {
        ($field:ident, $versioned:expr, [$($f:expr),*]) => {{
            if keys {
                q = q
                    .bind(col(rows, |ix| &ix.$field, |r, _| r.ty))
                    .bind(col(rows, |ix| &ix.$field, |r, _| r.id));
                if $versioned {
                    q = q.bind(col(rows, |ix| &ix.$field, |r, _| r.version_id));
                }
            }
            $(q = q.bind(col(rows, |ix| &ix.$field, |_, t| $f(t)));)*
        }};
    }
    if present[0] {
        table!(
            tokens,
            false,
            [
                |t: &'q (String, Option<String>, String, Option<String>)| t.0.as_str(),
                |t: &'q (String, Option<String>, String, Option<String>)| t.1.as_deref(),
                |t: &'q (String, Option<String>, String, Option<String>)| t.2.as_str(),
                |t: &'q (String, Option<String>, String, Option<String>)| t.3.as_deref()
            ]
        );
    }
    if present[1] {
        table!(
            strings,
            false,
            [
                |t: &'q (String, String, String)| t.0.as_str(),
                |t: &'q (String, String, String)| t.1.as_str(),
                |t: &'q (String, String, String)| t.2.as_str()
            ]
        );
    }
    if present[2] {
        table!(
            dates,
            false,
            [
                |t: &'q (String, i64, i64)| t.0.as_str(),
                |t: &'q (String, i64, i64)| t.1,
                |t: &'q (String, i64, i64)| t.2
            ]
        );
    }
    if present[3] {
        use crate::search::index::ReferenceRow as R;
        table!(
            references,
            true,
            [
                |t: &'q R| t.0.as_str(),
                |t: &'q R| t.1.as_deref(),
                |t: &'q R| t.2.as_deref(),
                |t: &'q R| t.3.as_str(),
                |t: &'q R| t.4,
                |t: &'q R| t.5,
                |t: &'q R| t.6.as_deref(),
                |t: &'q R| t.7.as_deref(),
                |t: &'q R| t.8,
                |t: &'q R| t.9.as_deref()
            ]
        );
    }
    if present[4] {
        use crate::search::index::QuantityRow as Q;
        table!(
            quantities,
            false,
            [
                |t: &'q Q| t.0.as_str(),
                |t: &'q Q| t.1,
                |t: &'q Q| t.2.as_deref(),
                |t: &'q Q| t.3.as_deref(),
                |t: &'q Q| t.4,
                |t: &'q Q| t.5.as_deref()
            ]
        );
    }
    if present[5] {
        table!(
            numbers,
            false,
            [
                |t: &'q (String, f64)| t.0.as_str(),
                |t: &'q (String, f64)| t.1
            ]
        );
    }
    if present[6] {
        table!(
            uris,
            false,
            [
                |t: &'q (String, String)| t.0.as_str(),
                |t: &'q (String, String)| t.1.as_str()
            ]
        );
    }
    if present[7] {
        use crate::search::index::CompositeRow as C;
        table!(
            composites,
            false,
            [
                |c: &'q C| c.param.as_str(),
                |c: &'q C| c.c1_system.as_deref(),
                |c: &'q C| c.c1_code.as_str(),
                |c: &'q C| c.c2_system.as_deref(),
                |c: &'q C| c.c2_code.as_deref(),
                |c: &'q C| c.c2_lo,
                |c: &'q C| c.c2_hi,
                |c: &'q C| c.c2_cvalue,
                |c: &'q C| c.c2_ccode.as_deref(),
                |c: &'q C| c.c3
            ]
        );
    }
    q
}

/// Creates of several new resources in ONE statement (see [`apply_pg`]): the rows of every
/// table as parallel arrays. Used by [`create_batcher`].
async fn apply_pg_creates(
    conn: &mut sqlx::PgConnection,
    rows: &[VersionRow<'_>],
) -> Result<(), StoreError> {
    let present = present_tables(rows);
    let mut sql = String::with_capacity(2000);
    sql.push_str(
        "with r as (insert into resource (res_type, res_id, version_id, last_updated, deleted) \
         select t, i, v, u, false from unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) as x(t, i, v, u)), \
         h as (insert into resource_history (res_type, res_id, version_id, last_updated, method, content) \
         select t, i, v, u, m, c from unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[]) \
         as x(t, i, v, u, m, c)), \
         c as (insert into change_log (res_type, res_id, version_id, method, recorded_at) \
         select t, i, v, m, u from unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[]) \
         as x(t, i, v, u, m)), ",
    );
    let mut n = 7;
    for (i, ((table, columns), types)) in INDEX_COLUMNS.iter().zip(PG_INDEX_TYPES).enumerate() {
        if !present[i] {
            continue;
        }
        let versioned = !version_column(table).0.is_empty();
        let mut names = vec!["k0".to_owned(), "k1".to_owned()];
        let mut arrays = vec![format!("${n}::text[]"), format!("${}::text[]", n + 1)];
        n += 2;
        if versioned {
            names.push("kv".into());
            arrays.push(format!("${n}::int8[]"));
            n += 1;
        }
        for (k, t) in types.iter().enumerate() {
            names.push(format!("c{k}"));
            arrays.push(format!("${n}::{t}[]"));
            n += 1;
        }
        let values: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|c| *c != "kv")
            .chain(versioned.then_some("kv"))
            .collect();
        let _ = write!(
            sql,
            "i{i} as (insert into {table} (res_type, res_id, {columns}{}) \
             select {} from unnest({}) as x({})), ",
            version_column(table).0,
            values.join(", "),
            arrays.join(", "),
            names.join(", ")
        );
    }
    sql.push_str("z as (select 1) select 1");
    let q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(rows.iter().map(|r| r.ty).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_updated).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.method).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.content).collect::<Vec<_>>());
    bind_index(q, rows, present, true).execute(conn).await?;
    Ok(())
}

/// A create waiting for [`create_batcher`]: the planned version, owned, and where its outcome
/// goes.
pub struct CreateJob {
    ty: &'static str,
    id: String,
    version_id: i64,
    last_updated: i64,
    content: Option<String>,
    index: IndexRows,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl CreateJob {
    fn row(&self, index: IndexRows) -> VersionRow<'_> {
        VersionRow {
            ty: self.ty,
            id: &self.id,
            version_id: self.version_id,
            last_updated: self.last_updated,
            created: true,
            method: Method::Post.as_str(),
            content: self.content.as_deref(),
            index,
            index_only: false,
        }
    }
}

/// Statements writing batches at once: PostgreSQL works on each with a core of its own.
const CREATE_BATCHERS: usize = 2;

/// Writes plain creates (POST of a new resource, PostgreSQL) in batches: the creates that
/// arrive while a statement runs go together into the next one, one statement and one commit
/// for all of them. A statement costs PostgreSQL more to set up than to write one resource's
/// rows (every table and index opened), and each commit flushes the WAL; with many clients
/// writing, this is where creates spend their time. A create is answered only after the
/// statement holding it committed. When a batch fails, its creates are written one by one,
/// so that one bad create fails alone.
async fn create_batcher(pool: PgPool, jobs: batch::Jobs<CreateJob>) {
    while let Some(mut batch) = batch::next_batch(&jobs, batch::MAX_BATCH).await {
        let indexes: Vec<IndexRows> = batch
            .iter_mut()
            .map(|j| std::mem::take(&mut j.index))
            .collect();
        let results = {
            let rows: Vec<VersionRow<'_>> =
                batch.iter().zip(indexes).map(|(j, ix)| j.row(ix)).collect();
            let run = async {
                let mut conn = pool.acquire().await?;
                match rows.as_slice() {
                    [one] => apply_pg(&mut conn, one).await,
                    many => apply_pg_creates(&mut conn, many).await,
                }
            };
            match batch::guarded(run, "a batch of creates").await {
                Ok(()) => rows.iter().map(|_| Ok(())).collect::<Vec<_>>(),
                Err(e) if rows.len() == 1 => vec![Err(e)],
                Err(_) => {
                    let mut each = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let one = async {
                            let mut conn = pool.acquire().await?;
                            apply_pg(&mut conn, row).await
                        };
                        each.push(batch::guarded(one, "a create").await);
                    }
                    each
                }
            }
        };
        for (j, r) in batch.into_iter().zip(results) {
            let _ = j.done.send(r);
        }
    }
}

/// The error of a request whose batcher is gone: the store is shutting down.
fn closed() -> StoreError {
    StoreError::Db(sqlx::Error::PoolClosed)
}

/// Writes a version in ONE statement: a data-modifying CTE, so a write costs one round trip
/// besides BEGIN and COMMIT (https://www.postgresql.org/docs/current/queries-with.html#QUERIES-WITH-MODIFYING).
/// The index deletes and inserts see the same snapshot, so the deletes remove only old rows.
/// Each index table gets its rows as parallel arrays through `unnest`.
async fn apply_pg(conn: &mut sqlx::PgConnection, row: &VersionRow<'_>) -> Result<(), StoreError> {
    // Only the index tables this version has rows for take part: every table in the statement
    // costs PostgreSQL a relation open and lock of the table and its indexes even with no rows.
    // The text then depends on which tables are present, a handful of variants per resource
    // type, each prepared once per connection by sqlx's statement cache.
    let present = present_tables(std::slice::from_ref(row));
    let mut sql = String::with_capacity(1500);
    sql.push_str("with ");
    if row.index_only {
        // Reindex: the version is stored already; its columns are bound but only selected
        // below, to keep one parameter list.
    } else if row.created {
        sql.push_str(
            "r as (insert into resource (res_type, res_id, version_id, last_updated, deleted) \
             values ($1, $2, $3, $4, $5)), ",
        );
    } else {
        sql.push_str(
            "r as (update resource set version_id = $3, last_updated = $4, deleted = $5 \
             where res_type = $1 and res_id = $2), ",
        );
    }
    if !row.created || row.index_only {
        // The previous version's rows may be in any table.
        for (i, (table, _)) in INDEX_COLUMNS.iter().enumerate() {
            let _ = write!(
                sql,
                "d{i} as (delete from {table} where res_type = $1 and res_id = $2), "
            );
        }
    }
    if !row.index_only {
        sql.push_str(
            "h as (insert into resource_history (res_type, res_id, version_id, last_updated, method, content) \
             values ($1, $2, $3, $4, $6, $7)), \
             c as (insert into change_log (res_type, res_id, version_id, method, recorded_at) \
             values ($1, $2, $3, $6, $4)), ",
        );
    }
    let mut n = 8;
    for (i, ((table, columns), types)) in INDEX_COLUMNS.iter().zip(PG_INDEX_TYPES).enumerate() {
        if !present[i] {
            continue;
        }
        let names: Vec<String> = (0..types.len()).map(|k| format!("c{k}")).collect();
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(k, t)| format!("${}::{t}[]", n + k))
            .collect();
        n += types.len();
        let (version_column, version) = version_column(table);
        let _ = write!(
            sql,
            "i{i} as (insert into {table} (res_type, res_id, {columns}{version_column}) \
             select $1, $2, {}{version} from unnest({}) as x({})), ",
            names.join(", "),
            arrays.join(", "),
            names.join(", ")
        );
    }
    sql.push_str(if row.index_only {
        "z as (select 1) select $3::int8, $4::int8, $5::bool, $6::text, $7::text"
    } else {
        "z as (select 1) select 1"
    });
    let q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(row.ty)
        .bind(row.id)
        .bind(row.version_id)
        .bind(row.last_updated)
        .bind(row.content.is_none())
        .bind(row.method)
        .bind(row.content);
    let q = bind_index(q, std::slice::from_ref(row), present, false);
    let result = q.execute(conn).await;
    match result {
        Ok(_) => Ok(()),
        // The id was created by a concurrent transaction after our look-up (client-chosen ids
        // only): refuse rather than overwrite what the other writer committed.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::VersionConflict {
                expected: 0,
                current: None,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes a version with one multi-statement query: SQLite binds `$N` by absolute position
/// across the statements, and each call into sqlx's SQLite worker thread costs a hand-off, so
/// one call instead of five keeps the single writer busy writing.
async fn apply_sqlite_in_tx(
    conn: &mut sqlx::SqliteConnection,
    row: &VersionRow<'_>,
) -> Result<(), StoreError> {
    apply_sqlite(conn, row, "", "", false).await
}

/// `prefix` and `suffix` wrap the statements (BEGIN and COMMIT of [`Store::write_one`]);
/// `guarded` makes the write fail unless the resource is still at the version it was planned on.
async fn apply_sqlite(
    conn: &mut sqlx::SqliteConnection,
    row: &VersionRow<'_>,
    prefix: &str,
    suffix: &str,
    guarded: bool,
) -> Result<(), StoreError> {
    let mut sql = String::with_capacity(700);
    sql.push_str(prefix);
    if row.index_only {
        // Reindex: the version columns are bound but only selected, to keep one parameter list.
        sql.push_str("select $3, $4, $5, $6, $7;");
        for (table, _) in INDEX_COLUMNS {
            sql.push_str(&format!(
                "delete from {table} where res_type = $1 and res_id = $2;"
            ));
        }
    } else {
        // The history row first: in `guarded` form its version is computed from the current row and
        // is NULL (a NOT NULL violation that aborts everything) unless the current version is still
        // the one this write was planned on.
        let version = if guarded && !row.created {
            "(select version_id + 1 from resource where res_type = $1 and res_id = $2 and version_id = $3 - 1)"
        } else {
            "$3"
        };
        sql.push_str(&format!(
        "insert into resource_history (res_type, res_id, version_id, last_updated, method, content) \
         values ($1, $2, {version}, $4, $6, $7);"
    ));
        if row.created {
            sql.push_str("insert into resource (res_type, res_id, version_id, last_updated, deleted) values ($1, $2, $3, $4, $5);");
        } else {
            sql.push_str(
            "update resource set version_id = $3, last_updated = $4, deleted = $5 where res_type = $1 and res_id = $2;",
        );
            for (table, _) in INDEX_COLUMNS {
                sql.push_str(&format!(
                    "delete from {table} where res_type = $1 and res_id = $2;"
                ));
            }
        }
        sql.push_str("insert into change_log (res_type, res_id, version_id, method, recorded_at) values ($1, $2, $3, $6, $4);");
    }
    // Each index table's rows travel as one JSON array bound to one parameter and are unpacked
    // by json_each, so the SQL text depends only on which tables get rows, not on how many,
    // and sqlx's statement cache prepares each variant once per connection
    // (https://www.sqlite.org/json1.html#jeach).
    let ix = &row.index;
    let composites: Vec<_> = ix
        .composites
        .iter()
        .map(|c| {
            (
                &c.param,
                &c.c1_system,
                &c.c1_code,
                &c.c2_system,
                &c.c2_code,
                c.c2_lo,
                c.c2_hi,
                c.c2_cvalue,
                &c.c2_ccode,
                c.c3,
            )
        })
        .collect();
    let arrays = [
        (ix.tokens.is_empty(), serde_json::to_string(&ix.tokens)?),
        (ix.strings.is_empty(), serde_json::to_string(&ix.strings)?),
        (ix.dates.is_empty(), serde_json::to_string(&ix.dates)?),
        (
            ix.references.is_empty(),
            serde_json::to_string(&ix.references)?,
        ),
        (
            ix.quantities.is_empty(),
            serde_json::to_string(&ix.quantities)?,
        ),
        (ix.numbers.is_empty(), serde_json::to_string(&ix.numbers)?),
        (ix.uris.is_empty(), serde_json::to_string(&ix.uris)?),
        (composites.is_empty(), serde_json::to_string(&composites)?),
    ];
    let mut n = 8;
    for ((table, columns), (empty, _)) in INDEX_COLUMNS.iter().zip(&arrays) {
        if *empty {
            continue;
        }
        let (version_column, version) = version_column(table);
        let _ = write!(
            sql,
            "insert into {table} (res_type, res_id, {columns}{version_column}) select $1, $2"
        );
        for c in 0..columns.split(',').count() {
            let _ = write!(sql, ", json_extract(value, '$[{c}]')");
        }
        sql.push_str(version);
        let _ = write!(sql, " from json_each(${n});");
        n += 1;
    }
    sql.push_str(suffix);
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(row.ty)
        .bind(row.id)
        .bind(row.version_id)
        .bind(row.last_updated)
        .bind(row.content.is_none())
        .bind(row.method)
        .bind(row.content);
    for (empty, json) in arrays {
        if !empty {
            q = q.bind(json);
        }
    }
    match q.execute(conn).await {
        Ok(_) => Ok(()),
        // As on PostgreSQL (apply_pg): a create of an id that exists is a conflict.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::VersionConflict {
                expected: 0,
                current: None,
            })
        }
        Err(e) => Err(e.into()),
    }
}

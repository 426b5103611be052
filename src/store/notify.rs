//! The subscription engine's durable state (`0012_notification.sql`, issue 6): its position in
//! the change log and the notifications waiting for delivery, in order per subscription.
//!
//! Matching and queueing commit together with the engine's new position, so a crash between
//! a resource's commit and its delivery loses nothing and queues nothing twice (DESIGN.md rule
//! 3). Delivery takes a notification under a lease (its `due_at` moved past the lease) rather
//! than holding a row lock over a slow HTTP call; only the first waiting notification of each
//! subscription can be taken, so a retry is never overtaken. Several processes on one
//! PostgreSQL take different notifications (`FOR UPDATE SKIP LOCKED`).

use super::changes::{Change, ChangeCursor};
use super::{Store, StoreError};

/// A queued notification.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Notification {
    pub id: i64,
    pub subscription_id: String,
    /// The subscription's event count after this event (the Backport IG's `eventNumber`).
    pub event_number: i64,
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub method: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
    pub due_at: i64,
    /// Deliveries tried, this one included once taken.
    pub attempts: i32,
    pub last_error: Option<String>,
    /// When its failures began (microseconds); `None` until one fails.
    pub failing_since: Option<i64>,
}

/// A subscription's event as kept for `$events`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Event {
    pub event_number: i64,
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub method: String,
    /// Microseconds since the epoch.
    pub created_at: i64,
}

const COLUMNS: &str = "id, subscription_id, event_number, res_type, res_id, version_id, method, \
                       created_at, due_at, attempts, last_error, failing_since";

/// The engine's position as stored.
fn stored(cursor: &ChangeCursor) -> Result<(i64, String), StoreError> {
    let (next, gaps) = cursor.parts();
    Ok((next, serde_json::to_string(&gaps)?))
}

impl Store {
    /// Where the subscription engine stands; `None` before its first run.
    pub async fn engine_cursor(&self) -> Result<Option<ChangeCursor>, StoreError> {
        let sql = "select next_seq, gaps from subscription_engine where id = 1";
        let row: Option<(i64, String)> =
            on_pool!(self, read, pool => sqlx::query_as(sql).fetch_optional(pool).await?);
        row.map(|(next, gaps)| {
            let gaps: Vec<i64> = serde_json::from_str(&gaps)?;
            Ok(ChangeCursor::from_parts(next, &gaps))
        })
        .transpose()
    }

    /// Takes or renews the lease of the process that matches the change log (`leader`, until
    /// `now + lease` microseconds); false while another process holds it. On the very first
    /// run it places the engine at the end of the change log: subscriptions are about what is
    /// written from now on.
    pub async fn engine_lease(
        &self,
        leader: &str,
        now: i64,
        lease: i64,
    ) -> Result<bool, StoreError> {
        // `where true`: SQLite cannot otherwise tell the SELECT's end from the upsert clause.
        let sql = "insert into subscription_engine (id, next_seq, gaps, leader, lease_until) \
                   select 1, coalesce(max(seq), 0) + 1, '[]', $1, $2 + $3 from change_log where true \
                   on conflict (id) do update set leader = excluded.leader, \
                   lease_until = excluded.lease_until \
                   where subscription_engine.leader = excluded.leader \
                   or subscription_engine.lease_until < $2 \
                   returning id";
        let row: Option<(i32,)> = on_pool!(self, write, pool => sqlx::query_as(sql)
            .bind(leader).bind(now).bind(lease).fetch_optional(pool).await?);
        Ok(row.is_some())
    }

    /// Queues `matched` (subscription id and change, in delivery order) and moves the engine
    /// from `from` (the position they were read at; `None`: its first run) to `to`, in one
    /// transaction. Returns each notification's event number. Fails with a version conflict,
    /// queueing nothing, when the engine is no longer at `from`: another process matched
    /// these changes first.
    pub async fn enqueue(
        &self,
        from: Option<&ChangeCursor>,
        to: &ChangeCursor,
        matched: &[(String, Change)],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let expected = from.map(stored).transpose()?;
        let (next, gaps) = stored(to)?;
        let conflict = || StoreError::VersionConflict {
            expected: 0,
            current: None,
        };
        macro_rules! run {
            ($tx:expr, $lock:literal) => {{
                let current: Option<(i64, String)> = sqlx::query_as(concat!(
                    "select next_seq, gaps from subscription_engine where id = 1",
                    $lock
                ))
                .fetch_optional(&mut *$tx)
                .await?;
                if current != expected {
                    return Err(conflict());
                }
                let mut numbers = Vec::with_capacity(matched.len());
                for (subscription, c) in matched {
                    let (n,): (i64,) = sqlx::query_as(
                        "insert into subscription_events (subscription_id, events) values ($1, 1) \
                         on conflict (subscription_id) \
                         do update set events = subscription_events.events + 1 returning events",
                    )
                    .bind(subscription)
                    .fetch_one(&mut *$tx)
                    .await?;
                    // The queued notification and the kept event (`$events`) carry the same
                    // columns; the notification is due at once.
                    for sql in [
                        "insert into notification (subscription_id, event_number, res_type, \
                         res_id, version_id, method, created_at, due_at) \
                         values ($1, $2, $3, $4, $5, $6, $7, $7)",
                        "insert into subscription_event (subscription_id, event_number, \
                         res_type, res_id, version_id, method, created_at) \
                         values ($1, $2, $3, $4, $5, $6, $7)",
                    ] {
                        sqlx::query(sql)
                            .bind(subscription)
                            .bind(n)
                            .bind(&c.res_type)
                            .bind(&c.res_id)
                            .bind(c.version_id)
                            .bind(&c.method)
                            .bind(now)
                            .execute(&mut *$tx)
                            .await?;
                    }
                    numbers.push(n);
                }
                sqlx::query(
                    "insert into subscription_engine (id, next_seq, gaps) values (1, $1, $2) \
                     on conflict (id) do update set next_seq = $1, gaps = $2",
                )
                .bind(next)
                .bind(&gaps)
                .execute(&mut *$tx)
                .await?;
                numbers
            }};
        }
        let numbers = match self {
            Store::Pg { pool, .. } => {
                let mut tx = pool.begin().await?;
                let numbers = run!(tx, " for update");
                tx.commit().await?;
                numbers
            }
            Store::Sqlite { write, .. } => {
                // IMMEDIATE: the check and the writes see no other writer in between.
                let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                let numbers = run!(tx, "");
                tx.commit().await?;
                numbers
            }
        };
        Ok(numbers)
    }

    /// Takes up to `limit` notifications due at `now`, the first waiting of each subscription
    /// only, for `lease` microseconds: until then no one else takes them.
    pub async fn claim(
        &self,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let heads = "select n.id from notification n where n.due_at <= $1 \
                     and not exists (select 1 from notification p \
                     where p.subscription_id = n.subscription_id \
                     and p.event_number < n.event_number) \
                     order by n.due_at, n.id limit $3";
        let mut taken: Vec<Notification> = match self {
            Store::Pg { pool, .. } => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "with h as ({heads} for update skip locked) \
                     update notification set due_at = $1 + $2, attempts = attempts + 1 \
                     from h where notification.id = h.id returning notification.*"
                )))
                .bind(now)
                .bind(lease)
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Store::Sqlite { write, .. } => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "update notification set due_at = $1 + $2, attempts = attempts + 1 \
                     where id in ({heads}) returning {COLUMNS}"
                )))
                .bind(now)
                .bind(lease)
                .bind(limit)
                .fetch_all(write)
                .await?
            }
        };
        taken.sort_by_key(|n| n.id);
        Ok(taken)
    }

    /// A notification was delivered: it leaves the queue, and its subscription's next one
    /// can be taken.
    pub async fn delivered(&self, id: i64) -> Result<(), StoreError> {
        let sql = "delete from notification where id = $1";
        on_pool!(self, write, pool => sqlx::query(sql).bind(id).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// The notification waits until `due_at` without having failed (its subscription is not
    /// active yet).
    pub async fn postpone(&self, id: i64, due_at: i64) -> Result<(), StoreError> {
        let sql = "update notification set due_at = $2, attempts = attempts - 1 where id = $1";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(id).bind(due_at).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// A delivery failed at `now`: the notification waits until `due_at`, with the reason
    /// kept and the start of its failures noted.
    pub async fn retry_later(
        &self,
        id: i64,
        now: i64,
        due_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let sql = "update notification set due_at = $2, last_error = $3, \
                   failing_since = coalesce(failing_since, $4) where id = $1";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(id).bind(due_at).bind(error).bind(now).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Stops delivery to `subscription` (it is in error): its notifications stay queued, in
    /// order, until [`Store::release`].
    pub async fn hold(&self, subscription: &str) -> Result<(), StoreError> {
        let sql = "update notification set due_at = $2 where subscription_id = $1";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(subscription).bind(HELD).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Resumes delivery to `subscription` from its first held notification, with a fresh
    /// retry window and back-off.
    pub async fn release(&self, subscription: &str, now: i64) -> Result<(), StoreError> {
        let sql = "update notification set due_at = $2, attempts = 0, failing_since = null \
                   where subscription_id = $1 and due_at = $3";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(subscription).bind(now).bind(HELD).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// [`Store::release`] of several subscriptions in one statement (a new leader releases
    /// every active one).
    pub async fn release_all(&self, subscriptions: &[String], now: i64) -> Result<(), StoreError> {
        if subscriptions.is_empty() {
            return Ok(());
        }
        let sql = |list: &str| {
            format!(
                "update notification set due_at = $2, attempts = 0, failing_since = null \
                 where due_at = $3 and subscription_id in (select value from {list})"
            )
        };
        match self {
            Store::Pg { pool, .. } => {
                sqlx::query(sqlx::AssertSqlSafe(sql("unnest($1::text[]) as s(value)")))
                    .bind(subscriptions)
                    .bind(now)
                    .bind(HELD)
                    .execute(pool)
                    .await?;
            }
            Store::Sqlite { write, .. } => {
                sqlx::query(sqlx::AssertSqlSafe(sql("json_each($1)")))
                    .bind(serde_json::to_string(subscriptions)?)
                    .bind(now)
                    .bind(HELD)
                    .execute(write)
                    .await?;
            }
        }
        Ok(())
    }

    /// Forgets everything about a deleted subscription: its queue, its event count and its
    /// kept events, so that a new subscription with its id starts afresh.
    pub async fn forget(&self, subscription: &str) -> Result<(), StoreError> {
        for sql in [
            "delete from notification where subscription_id = $1",
            "delete from subscription_events where subscription_id = $1",
            "delete from subscription_event where subscription_id = $1",
        ] {
            on_pool!(self, write, pool => sqlx::query(sql)
                .bind(subscription).execute(pool).await.map(|_| ())?);
        }
        Ok(())
    }

    /// Drops what is queued for `subscription` (it was turned off or deleted).
    pub async fn discard(&self, subscription: &str) -> Result<u64, StoreError> {
        let sql = "delete from notification where subscription_id = $1";
        Ok(on_pool!(self, write, pool => sqlx::query(sql)
            .bind(subscription).execute(pool).await?.rows_affected()))
    }

    /// How many events `subscription` has had (the Backport IG's
    /// `events-since-subscription-start`), delivered or not.
    pub async fn event_count(&self, subscription: &str) -> Result<i64, StoreError> {
        let sql = "select events from subscription_events where subscription_id = $1";
        let n: Option<(i64,)> = on_pool!(self, read, pool => sqlx::query_as(sql)
            .bind(subscription).fetch_optional(pool).await?);
        Ok(n.map_or(0, |(n,)| n))
    }

    /// The events `from..=to` of `subscription` still kept, oldest first, at most `limit`.
    pub async fn events(
        &self,
        subscription: &str,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let sql = "select event_number, res_type, res_id, version_id, method, created_at \
                   from subscription_event where subscription_id = $1 \
                   and event_number >= $2 and event_number <= $3 order by event_number limit $4";
        Ok(on_pool!(self, read, pool => sqlx::query_as(sql)
            .bind(subscription).bind(from).bind(to).bind(limit).fetch_all(pool).await?))
    }

    /// Forgets the events recorded before `before` (microseconds); returns how many.
    pub async fn purge_events(&self, before: i64) -> Result<u64, StoreError> {
        let sql = "delete from subscription_event where created_at < $1";
        Ok(on_pool!(self, write, pool => sqlx::query(sql)
            .bind(before).execute(pool).await?.rows_affected()))
    }

    /// How many notifications wait for `subscription`.
    pub async fn queued(&self, subscription: &str) -> Result<i64, StoreError> {
        let sql = "select count(*) from notification where subscription_id = $1";
        let (n,): (i64,) = on_pool!(self, read, pool => sqlx::query_as(sql)
            .bind(subscription).fetch_one(pool).await?);
        Ok(n)
    }
}

/// The `due_at` of a held notification: never due.
pub const HELD: i64 = i64::MAX;

//! Reading the change log after commit (DESIGN.md rule 3): every committed version once, in the
//! order of its `seq`, for the subscription engine (issue 6).
//!
//! On PostgreSQL a `seq` is taken when a transaction writes its row, not when it commits, so a
//! later `seq` can become visible first: transaction A takes 5, B takes 6 and commits, A commits
//! afterwards. A reader that simply remembered "everything up to 6 is done" would never see 5.
//! So the cursor also keeps the *gaps* it stepped over, and looks for them again on every read
//! until they can no longer appear. A gap is permanent once every transaction that could still
//! hold its `seq` has ended: the cursor notes the snapshot's `xmax` (the first transaction id
//! not yet assigned) one settling interval after it saw the gap, and drops the gap when a later
//! snapshot's `xmin` (the oldest transaction still running) has passed it
//! (https://www.postgresql.org/docs/current/functions-info.html#FUNCTIONS-PG-SNAPSHOT). The
//! settling interval covers a writer that has taken its `seq` but not yet its transaction id.
//! Sequence values of rolled-back transactions are such permanent gaps.
//!
//! SQLite writes one transaction at a time, so its rows become visible in `seq` order and a gap
//! is a rolled-back write: permanent at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Store, StoreError};

/// One committed version, as the change log records it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Change {
    pub seq: i64,
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    /// `POST`, `PUT` or `DELETE`.
    pub method: String,
    /// Microseconds since the epoch.
    pub recorded_at: i64,
    /// The version's JSON; for a delete, the JSON of the version it deleted (what a
    /// subscription's criteria are matched against). Filled by [`Store::read_changes`].
    #[sqlx(default)]
    pub content: Option<String>,
}

/// How long after a gap is seen the cursor waits before noting the transaction horizon it must
/// pass: longer than a writer takes between taking its `seq` and its transaction id.
const SETTLE: Duration = Duration::from_secs(1);

/// A gap the cursor stepped over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gap {
    seen: Instant,
    /// The `xmax` of a snapshot taken at least [`SETTLE`] after the gap was seen.
    horizon: Option<i64>,
}

/// Where a reader of the change log stands: every `seq` below `next` has been returned, except
/// the open gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeCursor {
    next: i64,
    gaps: BTreeMap<i64, Gap>,
}

impl ChangeCursor {
    /// A cursor after `seq`: the changes from `seq + 1` on are new (0: from the beginning).
    pub fn after(seq: i64) -> ChangeCursor {
        ChangeCursor {
            next: seq + 1,
            gaps: BTreeMap::new(),
        }
    }

    /// The cursor as stored (`0012_notification.sql`): `next` and the awaited `seq`s.
    pub fn parts(&self) -> (i64, Vec<i64>) {
        (self.next, self.open_gaps().collect())
    }

    /// A stored cursor back; its gaps count as seen now (their settling starts again).
    pub fn from_parts(next: i64, gaps: &[i64]) -> ChangeCursor {
        let now = Instant::now();
        ChangeCursor {
            next,
            gaps: gaps
                .iter()
                .map(|&g| {
                    (
                        g,
                        Gap {
                            seen: now,
                            horizon: None,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The `seq` values the cursor still waits for.
    pub fn open_gaps(&self) -> impl Iterator<Item = i64> + '_ {
        self.gaps.keys().copied()
    }

    /// Takes `rows` (ordered by `seq`, each either an open gap or at least `next`) into the
    /// cursor and returns those to hand on. A read cut at its limit leaves no gap beyond its
    /// last row: `next` moves only to the row after it.
    fn advance(&mut self, rows: Vec<Change>, now: Instant) -> Vec<Change> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if self.gaps.remove(&row.seq).is_some() {
                out.push(row);
                continue;
            }
            if row.seq < self.next {
                // Returned already (a gap query racing the cursor cannot produce this, but
                // a duplicate must never be handed on).
                continue;
            }
            for missing in self.next..row.seq {
                self.gaps.insert(
                    missing,
                    Gap {
                        seen: now,
                        horizon: None,
                    },
                );
            }
            self.next = row.seq + 1;
            out.push(row);
        }
        out
    }

    /// Drops the gaps no transaction can fill any more, given a snapshot's `xmin` and `xmax`
    /// taken at `now` in which they were still missing.
    fn settle(&mut self, xmin: i64, xmax: i64, now: Instant) {
        self.gaps.retain(|_, gap| match gap.horizon {
            Some(h) => xmin < h,
            None => {
                if now.duration_since(gap.seen) >= SETTLE {
                    gap.horizon = Some(xmax);
                }
                true
            }
        });
    }
}

/// The SELECT list of [`Change`], from `change_log c` joined with `resource_history h`.
const COLUMNS: &str =
    "c.seq, c.res_type, c.res_id, c.version_id, c.method, c.recorded_at, h.content";

impl Store {
    /// The resources of type `ty` changed after `cursor` (not yet read through it), each with
    /// the first such change's version: as of the cursor, each was at the version before.
    pub async fn changed_after(
        &self,
        cursor: &ChangeCursor,
        ty: &str,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let gaps: Vec<i64> = cursor.open_gaps().collect();
        let sql = format!(
            "select res_id, min(version_id) from change_log where res_type = $3 \
             and (seq >= $1 or seq in (select value from {})) group by res_id",
            match self {
                Store::Pg { .. } => "unnest($2::int8[]) as g(value)",
                Store::Sqlite { .. } => "json_each($2)",
            }
        );
        Ok(match self {
            Store::Pg { pool, .. } => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(cursor.next)
                    .bind(&gaps)
                    .bind(ty)
                    .fetch_all(pool)
                    .await?
            }
            Store::Sqlite { read, .. } => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(cursor.next)
                    .bind(serde_json::to_string(&gaps)?)
                    .bind(ty)
                    .fetch_all(read)
                    .await?
            }
        })
    }

    /// The next committed changes after `cursor`, at most `limit`, in `seq` order (a late
    /// commit's change comes when it becomes visible); moves the cursor past them.
    pub async fn read_changes(
        &self,
        cursor: &mut ChangeCursor,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let gaps: Vec<i64> = cursor.open_gaps().collect();
        let sql = format!(
            "select {COLUMNS} from change_log c left join resource_history h \
             on h.res_type = c.res_type and h.res_id = c.res_id \
             and h.version_id = c.version_id - (case when c.method = 'DELETE' then 1 else 0 end) \
             where c.seq >= $1 or c.seq in (select value from {}) order by c.seq limit $3",
            match self {
                Store::Pg { .. } => "unnest($2::int8[]) as g(value)",
                Store::Sqlite { .. } => "json_each($2)",
            }
        );
        let now = Instant::now();
        match self {
            Store::Pg { pool, .. } => {
                // One snapshot for the horizon and the rows: REPEATABLE READ fixes it at the
                // first statement.
                let mut tx = pool.begin().await?;
                sqlx::query("set transaction isolation level repeatable read, read only")
                    .execute(&mut *tx)
                    .await?;
                let (xmin, xmax): (i64, i64) = sqlx::query_as(
                    "select pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8 \
                     from pg_current_snapshot() as s",
                )
                .fetch_one(&mut *tx)
                .await?;
                let rows: Vec<Change> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(cursor.next)
                    .bind(&gaps)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                let out = cursor.advance(rows, now);
                cursor.settle(xmin, xmax, now);
                Ok(out)
            }
            Store::Sqlite { read, .. } => {
                let rows: Vec<Change> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(cursor.next)
                    .bind(serde_json::to_string(&gaps)?)
                    .bind(limit)
                    .fetch_all(read)
                    .await?;
                let out = cursor.advance(rows, now);
                // One writer at a time: a missing seq is a rolled-back write.
                cursor.gaps.clear();
                Ok(out)
            }
        }
    }
}

/// Waits for new changes: on PostgreSQL for the `NOTIFY` a commit to the change log sends
/// (`0013_engine_lease.sql`), from any process; on SQLite, whose only writer is this process,
/// by polling.
pub enum ChangeWaiter {
    Pg(Box<sqlx::postgres::PgListener>),
    Poll,
}

/// How often SQLite's change log is looked at when nothing wakes the reader earlier.
const SQLITE_POLL: Duration = Duration::from_millis(20);

impl ChangeWaiter {
    /// Returns after a change commits or `max` passes, whichever comes first (a lost
    /// connection is reopened by the listener; a missed wake-up costs at most `max`).
    pub async fn wait(&mut self, max: Duration) {
        match self {
            ChangeWaiter::Pg(listener) => {
                let _ = tokio::time::timeout(max, listener.recv()).await;
                // Everything that arrived meanwhile is one wake-up.
                while listener.next_buffered().is_some() {}
            }
            ChangeWaiter::Poll => tokio::time::sleep(max.min(SQLITE_POLL)).await,
        }
    }
}

impl Store {
    /// A [`ChangeWaiter`] for this store.
    pub async fn change_waiter(&self) -> Result<ChangeWaiter, StoreError> {
        match self {
            Store::Pg { pool, .. } => {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen("vb_change_log").await?;
                Ok(ChangeWaiter::Pg(Box::new(listener)))
            }
            Store::Sqlite { .. } => Ok(ChangeWaiter::Poll),
        }
    }

    /// True once [`Store::close`] has run: background tasks stop.
    pub fn is_closed(&self) -> bool {
        match self {
            Store::Pg { pool, .. } => pool.is_closed(),
            Store::Sqlite { write, .. } => write.is_closed(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn change(seq: i64) -> Change {
        Change {
            seq,
            res_type: "Observation".into(),
            res_id: format!("o{seq}"),
            version_id: 1,
            method: "POST".into(),
            recorded_at: 0,
            content: None,
        }
    }

    fn seqs(rows: &[Change]) -> Vec<i64> {
        rows.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn a_late_commit_is_handed_on_when_it_shows_and_a_gap_waits_for_the_horizon() {
        let t0 = Instant::now();
        let mut c = ChangeCursor::after(0);
        // 1 and 3 committed, 2 not yet.
        let out = c.advance(vec![change(1), change(3)], t0);
        assert_eq!(seqs(&out), [1, 3]);
        assert_eq!(c.open_gaps().collect::<Vec<_>>(), [2]);
        // Still missing right away: no horizon yet, whatever the snapshot says.
        c.settle(1_000, 1_000, t0);
        assert_eq!(c.open_gaps().count(), 1);
        // 2 shows: handed on once, after 3; a replayed 3 is not handed on again.
        let out = c.advance(vec![change(2), change(3), change(4)], t0);
        assert_eq!(seqs(&out), [2, 4]);
        assert_eq!(c.open_gaps().count(), 0);
    }

    #[test]
    fn a_gap_is_dropped_only_once_the_transactions_that_could_fill_it_ended() {
        let t0 = Instant::now();
        let mut c = ChangeCursor::after(10);
        c.advance(vec![change(13)], t0);
        assert_eq!(c.open_gaps().collect::<Vec<_>>(), [11, 12]);
        // After the settling interval the horizon is noted: transaction ids below 500 were
        // assigned. Transaction 480 still runs (xmin 480): the gaps stay.
        let later = t0 + SETTLE;
        c.settle(480, 500, later);
        c.settle(480, 520, later + SETTLE);
        assert_eq!(c.open_gaps().count(), 2);
        // Every transaction below 500 ended: whatever held 11 and 12 rolled back.
        c.settle(500, 530, later + SETTLE * 2);
        assert_eq!(c.open_gaps().count(), 0);
        let out = c.advance(vec![change(14)], later);
        assert_eq!(seqs(&out), [14]);
    }
}

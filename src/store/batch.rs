//! Statements shared by concurrent requests (PostgreSQL).
//!
//! PostgreSQL spends more on setting up a statement (snapshot, executor start, relation locks,
//! the round trip) than on one point read or one resource's rows. Under load, the requests that
//! arrive while a statement runs wait for the next one and share it: one statement for up to
//! [`MAX_BATCH`] of them. A lone request runs at once, alone, so nothing waits when the server
//! is quiet. Creates are batched in `super` ([`super::create_batcher`]); point reads here.

use std::sync::Arc;

use futures::FutureExt;
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{StoreError, Version, pg};
use crate::fhir::types::{ResourceId, ResourceType};

/// Requests sharing one statement at most.
pub(super) const MAX_BATCH: usize = 64;

/// A queue of jobs that several batchers take from.
pub(super) type Jobs<J> = Arc<Mutex<mpsc::Receiver<J>>>;

/// The next batch: waits for one job, then takes the ones already waiting, up to `max`.
/// `None` when the queue is closed (the store was dropped).
pub(super) async fn next_batch<J>(jobs: &Jobs<J>, max: usize) -> Option<Vec<J>> {
    let mut rx = jobs.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Runs `work`, turning a panic into an error so that the batcher task survives it and every
/// job of the batch is answered.
pub(super) async fn guarded<T>(
    work: impl Future<Output = Result<T, StoreError>>,
    what: &str,
) -> Result<T, StoreError> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Db(sqlx::Error::Protocol(format!(
                "{what} panicked"
            ))))
        })
}

/// Statements reading current versions at once: each takes a connection of the pool.
pub(super) const READ_BATCHERS: usize = 4;

/// A point read of a current version waiting for [`read_batcher`].
pub struct ReadJob {
    pub(super) ty: ResourceType,
    pub(super) id: ResourceId,
    pub(super) done: oneshot::Sender<Result<Option<Version>, StoreError>>,
}

/// Answers point reads of current versions (`Store::read`), several per statement. Each read
/// still sees every write committed before it was asked: the statement starts after that.
pub(super) async fn read_batcher(pool: PgPool, jobs: Jobs<ReadJob>) {
    while let Some(batch) = next_batch(&jobs, MAX_BATCH).await {
        let read_one = |job: &ReadJob| {
            let pool = pool.clone();
            let (ty, id) = (job.ty, job.id.clone());
            guarded(
                async move { pg::read(&mut *pool.acquire().await?, ty, &id).await },
                "a read",
            )
        };
        let together = match batch.len() {
            1 => None,
            _ => Some(guarded(read_many(&pool, &batch), "a batch of reads").await),
        };
        match together {
            Some(Ok(found)) => {
                for (job, v) in batch.into_iter().zip(found) {
                    let _ = job.done.send(Ok(v));
                }
            }
            // A lone read runs alone; after a failed batch, rather than guess which read broke
            // the statement, each is tried alone.
            _ => {
                for job in batch {
                    let result = read_one(&job).await;
                    let _ = job.done.send(result);
                }
            }
        }
    }
}

/// The current versions of `jobs`' resources, in their order, in one statement.
async fn read_many(pool: &PgPool, jobs: &[ReadJob]) -> Result<Vec<Option<Version>>, StoreError> {
    let rows = sqlx::query(
        "select k.n, h.res_type, h.res_id, h.version_id, h.last_updated, h.method, h.content \
         from unnest($1::text[], $2::text[]) with ordinality as k(t, i, n) \
         cross join lateral (select * from resource_history h \
           where h.res_type = k.t and h.res_id = k.i order by h.version_id desc limit 1) h",
    )
    .bind(jobs.iter().map(|j| j.ty.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let mut out: Vec<Option<Version>> = jobs.iter().map(|_| None).collect();
    for row in rows {
        let n: i64 = row.try_get("n")?;
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| StoreError::Db(sqlx::Error::Protocol("read batch index".into())))?;
        *slot = Some(pg::version_from_row(&row)?);
    }
    Ok(out)
}

//! The subscription engine's durable queue (store::notify, issue 6): notifications and the
//! engine's position commit together, each subscription's notifications are taken in order,
//! one at a time, under a lease, and two takers never take the same one.

use std::collections::HashSet;

use crate::both;
use crate::common::{Backend, TestApp};
use vitalbridge::store::changes::{Change, ChangeCursor};
use vitalbridge::store::{ConnectOptions, Store, StoreError};

const LEASE: i64 = 30_000_000;

fn change(seq: i64, id: &str) -> Change {
    Change {
        seq,
        res_type: "Observation".into(),
        res_id: id.into(),
        version_id: 1,
        method: "POST".into(),
        recorded_at: 0,
        content: None,
    }
}

/// These tests drive the queue themselves: no engine of the app's own takes part.
fn no_engine(s: &mut vitalbridge::config::Settings) {
    s.subscriptions.enabled = false;
}

async fn store_of(app: &TestApp) -> Store {
    Store::connect(&app.database_url, &ConnectOptions::default())
        .await
        .expect("store")
}

fn taken(list: &[vitalbridge::store::notify::Notification]) -> Vec<(String, i64, String)> {
    list.iter()
        .map(|n| (n.subscription_id.clone(), n.event_number, n.res_id.clone()))
        .collect()
}

async fn notifications_are_taken_in_order_one_at_a_time(app: TestApp) {
    let store = store_of(&app).await;
    assert!(store.engine_cursor().await.expect("cursor").is_none());
    let first = ChangeCursor::from_parts(101, &[97, 99]);
    let matched = vec![
        ("sub-a".to_owned(), change(98, "o1")),
        ("sub-b".to_owned(), change(98, "o1")),
        ("sub-a".to_owned(), change(100, "o2")),
    ];
    let numbers = store
        .enqueue(None, &first, &matched, 1_000)
        .await
        .expect("enqueue");
    assert_eq!(numbers, [1, 1, 2]);
    let back = store
        .engine_cursor()
        .await
        .expect("cursor")
        .expect("stored");
    assert_eq!(back.parts(), (101, vec![97, 99]));

    // From a position that is not the engine's any more: nothing is queued.
    let stale = store
        .enqueue(None, &ChangeCursor::after(200), &matched, 1_000)
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { .. })),
        "{stale:?}"
    );
    // From the stored one: queued after the others, numbered on.
    let second = ChangeCursor::from_parts(102, &[97]);
    let numbers = store
        .enqueue(
            Some(&back),
            &second,
            &[("sub-b".to_owned(), change(101, "o3"))],
            1_000,
        )
        .await
        .expect("enqueue");
    assert_eq!(numbers, [2]);

    // Only each subscription's first: a-1 and b-1.
    let now = 2_000;
    let got = store.claim(now, LEASE, 10).await.expect("claim");
    assert_eq!(
        taken(&got),
        [
            ("sub-a".into(), 1, "o1".into()),
            ("sub-b".into(), 1, "o1".into())
        ]
    );
    assert!(
        got.iter()
            .all(|n| n.attempts == 1 && n.due_at == now + LEASE)
    );
    // Leased: nothing more now, even though a-2 and b-2 wait.
    assert!(store.claim(now, LEASE, 10).await.expect("claim").is_empty());
    // a-1 delivered, b-1 failed and waits for its retry: a-2 is next, b-2 waits behind b-1.
    store.delivered(got[0].id).await.expect("delivered");
    store
        .retry_later(got[1].id, now, now + 5_000, "HTTP 503")
        .await
        .expect("retry");
    let got = store.claim(now + 1, LEASE, 10).await.expect("claim");
    assert_eq!(taken(&got), [("sub-a".into(), 2, "o2".into())]);
    let got = store.claim(now + 5_000, LEASE, 10).await.expect("claim");
    assert_eq!(taken(&got), [("sub-b".into(), 1, "o1".into())]);
    assert_eq!(got[0].attempts, 2);
    assert_eq!(got[0].last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(
        got[0].failing_since,
        Some(now),
        "its retry window runs from its first failure"
    );
    // Released (its subscription resumed): a fresh window and back-off.
    store.hold("sub-b").await.expect("hold");
    store.release("sub-b", now + 6_000).await.expect("release");
    let got = store.claim(now + 6_000, LEASE, 10).await.expect("claim");
    assert_eq!(taken(&got), [("sub-b".into(), 1, "o1".into())]);
    assert_eq!((got[0].attempts, got[0].failing_since), (1, None));
    store.close().await;
}
both!(
    notifications_are_taken_in_order_one_at_a_time,
    super::no_engine
);

/// PostgreSQL: takers running at once never take the same notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_share_the_queue_on_postgres() {
    let app = crate::common::spawn_with(Backend::Postgres, no_engine).await;
    let store = store_of(&app).await;
    let matched: Vec<(String, Change)> = (0..200)
        .map(|i| (format!("sub-{i}"), change(i + 1, &format!("o{i}"))))
        .collect();
    store
        .enqueue(None, &ChangeCursor::after(200), &matched, 1_000)
        .await
        .expect("enqueue");
    let takers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim(2_000, LEASE, 7).await.expect("claim");
                if got.is_empty() {
                    break mine;
                }
                mine.extend(got.into_iter().map(|n| n.id));
            }
        })
    });
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in takers {
        let ids = t.await.expect("taker");
        total += ids.len();
        seen.extend(ids);
    }
    assert_eq!(total, 200, "each taken once");
    assert_eq!(seen.len(), 200);
    store.close().await;
}

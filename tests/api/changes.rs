//! Reading the change log after commit (store::changes, issue 6): every committed version once,
//! in order, including one whose transaction took its `seq` early and committed late.

use std::time::Duration;

use crate::both;
use crate::common::{Backend, TestApp, patient, spawn};
use vitalbridge::fhir::types::ResourceType;
use vitalbridge::store::changes::{Change, ChangeCursor};
use vitalbridge::store::{ConnectOptions, Store, Write};

fn names(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| {
            format!(
                "{} {}/{}/_history/{}",
                c.method, c.res_type, c.res_id, c.version_id
            )
        })
        .collect()
}

async fn store_of(app: &TestApp) -> Store {
    Store::connect(&app.database_url, &ConnectOptions::default())
        .await
        .expect("store")
}

async fn every_committed_version_is_read_once_in_order(app: TestApp) {
    let store = store_of(&app).await;
    let mut cursor = ChangeCursor::after(0);
    // What the server wrote at start (installed definitions) is read first.
    let start = store
        .read_changes(&mut cursor, 100_000)
        .await
        .expect("read");
    assert!(start.windows(2).all(|w| w[0].seq < w[1].seq));
    let a = app.create(&patient("Alpha")).await;
    let b = app.create(&patient("Beta")).await;
    let mut changed = patient("Alpha");
    changed["id"] = a.clone().into();
    assert_eq!(app.put(&format!("Patient/{a}"), &changed).await.status, 200);
    assert_eq!(app.delete(&format!("Patient/{b}")).await.status, 204);
    // What changed after a position, each with its first version there: what a new leader
    // of the subscription engine takes back to that position.
    let sorted = |mut v: Vec<(String, i64)>| {
        v.sort();
        v
    };
    let pending = store
        .changed_after(&cursor, "Patient")
        .await
        .expect("changed");
    assert_eq!(
        sorted(pending),
        sorted(vec![(a.clone(), 1), (b.clone(), 1)])
    );
    let mut partial = cursor.clone();
    assert_eq!(
        store
            .read_changes(&mut partial, 2)
            .await
            .expect("read")
            .len(),
        2
    );
    let pending = store
        .changed_after(&partial, "Patient")
        .await
        .expect("changed");
    assert_eq!(
        sorted(pending),
        sorted(vec![(a.clone(), 2), (b.clone(), 2)])
    );
    let none = store
        .changed_after(&cursor, "Observation")
        .await
        .expect("changed");
    assert!(none.is_empty());
    // Read two at a time: the cursor picks up where it stopped.
    let mut read = Vec::new();
    loop {
        let page = store.read_changes(&mut cursor, 2).await.expect("read");
        if page.is_empty() {
            break;
        }
        read.extend(page);
    }
    assert_eq!(
        names(&read),
        [
            format!("POST Patient/{a}/_history/1"),
            format!("POST Patient/{b}/_history/1"),
            format!("PUT Patient/{a}/_history/2"),
            format!("DELETE Patient/{b}/_history/2"),
        ]
    );
    assert!(read.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        store
            .read_changes(&mut cursor, 10)
            .await
            .expect("read")
            .is_empty()
    );
    store.close().await;
}
both!(every_committed_version_is_read_once_in_order);

/// PostgreSQL: a transaction that wrote first and commits after a later one is read when it
/// commits; a rolled-back write's `seq` stops being waited for once no transaction can fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_not_skipped_on_postgres() {
    let app = spawn(Backend::Postgres).await;
    let store = store_of(&app).await;
    let ty = ResourceType::parse("Patient").expect("type");
    let mut cursor = ChangeCursor::after(0);
    store
        .read_changes(&mut cursor, 100_000)
        .await
        .expect("read");

    // The slow writer takes its seq, then a quick one commits after it.
    let mut slow = store.begin().await.expect("begin");
    let mut p = patient("Slow");
    let slow_id = slow
        .write(ty, None, Write::Create { resource: &mut p })
        .await
        .expect("write")
        .id;
    let quick = app.create(&patient("Quick")).await;
    let read = store.read_changes(&mut cursor, 100).await.expect("read");
    assert_eq!(names(&read), [format!("POST Patient/{quick}/_history/1")]);
    assert_eq!(
        cursor.open_gaps().count(),
        1,
        "the slow writer's seq is awaited"
    );

    slow.commit().await.expect("commit");
    let read = store.read_changes(&mut cursor, 100).await.expect("read");
    assert_eq!(names(&read), [format!("POST Patient/{slow_id}/_history/1")]);
    assert_eq!(cursor.open_gaps().count(), 0);

    // A write rolled back leaves a gap before the next commit's seq...
    let mut undone = store.begin().await.expect("begin");
    let mut p = patient("Undone");
    undone
        .write(ty, None, Write::Create { resource: &mut p })
        .await
        .expect("write");
    drop(undone);
    let after = app.create(&patient("After")).await;
    let read = store.read_changes(&mut cursor, 100).await.expect("read");
    assert_eq!(names(&read), [format!("POST Patient/{after}/_history/1")]);
    assert_eq!(cursor.open_gaps().count(), 1);
    // ...which is let go once the settling interval passed and every transaction that was
    // running then has ended. Another connection keeps writing meanwhile.
    let mut waited = Duration::ZERO;
    while cursor.open_gaps().count() > 0 {
        assert!(waited < Duration::from_secs(30), "the gap is never let go");
        tokio::time::sleep(Duration::from_millis(200)).await;
        waited += Duration::from_millis(200);
        app.create(&patient("Meanwhile")).await;
        store.read_changes(&mut cursor, 100).await.expect("read");
    }
    store.close().await;
}

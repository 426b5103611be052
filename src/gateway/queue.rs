//! The gateway's durable queue (issue 8, item 4): every reading is committed to a local SQLite
//! file before the gateway takes the next one from the device, and leaves it only once the
//! server has answered for it. WAL with `synchronous = FULL`: a committed reading survives
//! `kill -9` and power loss (https://www.sqlite.org/pragma.html#pragma_synchronous).
//!
//! The file also keeps what `vitalbridge gateway status` shows: the devices seen, their battery
//! levels and last readings, the last successful upload, and readings the server rejected
//! (kept, with the reason, never retried: the server keeps the raw message too).

use std::path::Path;
use std::str::FromStr as _;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqliteSynchronous};

/// One characteristic value as received, in the shape `POST /ingest/hub` takes.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Reading {
    /// The Bluetooth address, `AA:BB:CC:DD:EE:FF`.
    pub address: Option<String>,
    /// The EUI-64 of the device's System ID characteristic, when it has one.
    pub system_id: Option<String>,
    /// The GATT service, `0x1810`.
    pub service: Option<String>,
    /// The characteristic, `0x2A35`.
    pub characteristic: String,
    /// The value in wire byte order.
    pub value: Vec<u8>,
    /// When the gateway received it, RFC 3339.
    pub received: String,
    /// The model number the device reported.
    pub model: Option<String>,
}

impl Reading {
    /// The value decoded by the server's decoders, for `gateway status`; the bytes in hex when
    /// they do not decode.
    pub fn display(&self) -> String {
        let uuid = crate::ingest::parse_uuid16(&self.characteristic);
        match uuid.map(|u| crate::ingest::gatt::decode(u, &self.value)) {
            Some(Ok(m)) => serde_json::to_string(&m).unwrap_or_default(),
            _ => self.value.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// A device as the gateway last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, sqlx::FromRow)]
pub struct SeenDevice {
    pub address: String,
    pub name: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// The EUI-64 of its System ID, once read.
    pub system_id: Option<String>,
    pub battery: Option<i64>,
    pub last_seen: Option<String>,
    pub last_characteristic: Option<String>,
    pub last_reading: Option<String>,
}

#[derive(Clone)]
pub struct Queue {
    pool: SqlitePool,
}

const SCHEMA: &str = "
create table if not exists reading (
    id             integer primary key autoincrement,
    address        text,
    system_id      text,
    service        text,
    characteristic text not null,
    value          blob not null,
    received       text not null,
    model          text
);
create table if not exists rejected (
    id             integer primary key,
    address        text,
    characteristic text not null,
    value          blob not null,
    received       text not null,
    reason         text not null,
    rejected_at    text not null
);
create table if not exists device (
    address             text primary key,
    name                text,
    manufacturer        text,
    model               text,
    system_id           text,
    battery             integer,
    last_seen           text,
    last_characteristic text,
    last_reading        text
);
create table if not exists state (key text primary key, value text not null);
";

/// What the server said about readings of a batch, by queue id.
#[derive(Debug, Default)]
pub struct Settled {
    /// Stored or already there: removed from the queue.
    pub done: Vec<i64>,
    /// Refused, with the reason: moved to `rejected`.
    pub rejected: Vec<(i64, String)>,
}

impl Queue {
    /// Opens (or creates) `{dir}/gateway.db`.
    pub async fn open(dir: &Path) -> anyhow::Result<Queue> {
        // Readings are patient data: the directory is the gateway user's alone.
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
                })?;
        }
        let file = dir.join("gateway.db");
        // No `journal_mode` per connection: changing it takes an exclusive lock that the busy
        // timeout does not wait for, so `gateway status` beside a running gateway would fail.
        // WAL is a property of the file, set once below.
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&file)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the queue {}: {e}", file.display()))?;
        let mode: String = sqlx::query_scalar("pragma journal_mode")
            .fetch_one(&pool)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            sqlx::query("pragma journal_mode = wal")
                .execute(&pool)
                .await?;
        }
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Queue { pool })
    }

    /// Opens `{dir}/gateway.db` to read it beside a running gateway (`gateway status`);
    /// `None` when the gateway has never run there.
    pub async fn open_read_only(dir: &Path) -> anyhow::Result<Option<Queue>> {
        let file = dir.join("gateway.db");
        if !file.exists() {
            return Ok(None);
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&file)
            .read_only(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the queue {}: {e}", file.display()))?;
        Ok(Some(Queue { pool }))
    }

    /// Commits a reading; returns its queue id once it is on disk.
    pub async fn push(&self, r: &Reading) -> sqlx::Result<i64> {
        let id = sqlx::query_scalar(
            "insert into reading (address, system_id, service, characteristic, value, received, \
             model) values ($1, $2, $3, $4, $5, $6, $7) returning id",
        )
        .bind(&r.address)
        .bind(&r.system_id)
        .bind(&r.service)
        .bind(&r.characteristic)
        .bind(&r.value)
        .bind(&r.received)
        .bind(&r.model)
        .fetch_one(&self.pool)
        .await?;
        if let Some(address) = &r.address {
            sqlx::query(
                "insert into device (address, last_seen, last_characteristic, last_reading) \
                 values ($1, $2, $3, $4) on conflict (address) do update set \
                 last_seen = excluded.last_seen, last_characteristic = excluded.last_characteristic, \
                 last_reading = excluded.last_reading",
            )
            .bind(address)
            .bind(&r.received)
            .bind(&r.characteristic)
            .bind(r.display())
            .execute(&self.pool)
            .await?;
        }
        Ok(id)
    }

    /// The oldest `limit` readings, with their queue ids.
    pub async fn oldest(&self, limit: usize) -> sqlx::Result<Vec<(i64, Reading)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: i64,
            #[sqlx(flatten)]
            reading: Reading,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "select id, address, system_id, service, characteristic, value, received, model \
             from reading order by id limit $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.reading)).collect())
    }

    /// Applies the server's answer in one transaction: what it took leaves the queue, what it
    /// refused moves to `rejected`; the time of the upload is kept.
    pub async fn settle(&self, s: &Settled, now: &str) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        for (id, reason) in &s.rejected {
            sqlx::query(
                "insert or replace into rejected (id, address, characteristic, value, received, \
                 reason, rejected_at) select id, address, characteristic, value, received, $2, $3 \
                 from reading where id = $1",
            )
            .bind(id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for id in s.done.iter().chain(s.rejected.iter().map(|(id, _)| id)) {
            sqlx::query("delete from reading where id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        set(&mut tx, "last_upload", now).await?;
        tx.commit().await
    }

    /// Readings waiting.
    pub async fn depth(&self) -> sqlx::Result<i64> {
        sqlx::query_scalar("select count(*) from reading")
            .fetch_one(&self.pool)
            .await
    }

    /// Readings the server refused, newest first.
    pub async fn rejected(&self, limit: i64) -> sqlx::Result<Vec<(String, String, String)>> {
        sqlx::query_as(
            "select characteristic, received, reason from rejected order by id desc limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn state(&self, key: &str) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar("select value from state where key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn set_state(&self, key: &str, value: &str) -> sqlx::Result<()> {
        let mut c = self.pool.acquire().await?;
        set(&mut c, key, value).await
    }

    /// Records what a device said about itself (name, Device Information, battery level).
    pub async fn describe(&self, d: &SeenDevice) -> sqlx::Result<()> {
        sqlx::query(
            "insert into device (address, name, manufacturer, model, battery, last_seen, \
             system_id) values ($1, $2, $3, $4, $5, $6, $7) on conflict (address) do update set \
             name = coalesce(excluded.name, name), \
             manufacturer = coalesce(excluded.manufacturer, manufacturer), \
             model = coalesce(excluded.model, model), \
             system_id = coalesce(excluded.system_id, system_id), \
             battery = coalesce(excluded.battery, battery), \
             last_seen = coalesce(excluded.last_seen, last_seen)",
        )
        .bind(&d.address)
        .bind(&d.name)
        .bind(&d.manufacturer)
        .bind(&d.model)
        .bind(d.battery)
        .bind(&d.last_seen)
        .bind(&d.system_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn devices(&self) -> sqlx::Result<Vec<SeenDevice>> {
        sqlx::query_as(
            "select address, name, manufacturer, model, system_id, battery, last_seen, \
             last_characteristic, last_reading from device order by address",
        )
        .fetch_all(&self.pool)
        .await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn set(c: &mut sqlx::SqliteConnection, key: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query(
        "insert into state (key, value) values ($1, $2) \
         on conflict (key) do update set value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(c)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(n: u8) -> Reading {
        Reading {
            address: Some("A4:C1:38:0B:2C:01".into()),
            system_id: None,
            service: Some("0x1810".into()),
            characteristic: "0x2A35".into(),
            value: vec![0x1e, n],
            received: format!("2026-12-02T10:00:0{n}Z"),
            model: None,
        }
    }

    #[tokio::test]
    async fn readings_stay_until_the_server_answers_for_them() {
        let dir = std::env::temp_dir().join(format!("vb-gw-{}", uuid::Uuid::new_v4().simple()));
        let q = Queue::open(&dir).await.expect("open");
        let ids: Vec<i64> = futures::future::join_all((1..=3).map(|n| {
            let q = q.clone();
            async move { q.push(&reading(n)).await.expect("push") }
        }))
        .await;
        assert_eq!(q.depth().await.expect("depth"), 3);
        let batch = q.oldest(2).await.expect("oldest");
        assert_eq!(batch.len(), 2);
        q.settle(
            &Settled {
                done: vec![batch[0].0],
                rejected: vec![(batch[1].0, "no such device".into())],
            },
            "2026-12-02T10:01:00Z",
        )
        .await
        .expect("settle");
        q.close().await;

        // Reopened, as after a restart: one reading still waits, one is kept as rejected.
        let q = Queue::open(&dir).await.expect("reopen");
        let left = q.oldest(10).await.expect("oldest");
        assert_eq!(left.len(), 1);
        assert!(ids.contains(&left[0].0));
        assert_eq!(
            q.rejected(10).await.expect("rejected")[0].2,
            "no such device"
        );
        assert_eq!(
            q.state("last_upload").await.expect("state").as_deref(),
            Some("2026-12-02T10:01:00Z")
        );
        q.describe(&SeenDevice {
            address: "A4:C1:38:0B:2C:01".into(),
            battery: Some(87),
            ..Default::default()
        })
        .await
        .expect("describe");
        let d = &q.devices().await.expect("devices")[0];
        assert_eq!(d.battery, Some(87));
        assert_eq!(d.last_characteristic.as_deref(), Some("0x2A35"));
        let last = d.last_reading.as_deref().unwrap_or_default();
        assert!(
            last.len() == 4 && last.starts_with("1e0"),
            "too short to decode, in hex: {last}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

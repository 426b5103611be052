//! The vitalbridge gateway (issue 8; DESIGN.md room `gateway`): a Bluetooth LE edge agent for a
//! small Linux box beside the patient. It reads health devices through btleplug (BlueZ over
//! D-Bus), commits each reading to a local queue before taking the next, and forwards the
//! queue to the server's `POST /ingest/hub` whenever the network allows.
//!
//! - [`config`]: the configuration file;
//! - [`queue`]: the durable store-and-forward queue (SQLite);
//! - [`radio`]: scanning, connecting, subscribing, Device Information, battery, Current Time,
//!   stored records (RACP), reconnection;
//! - [`uploader`]: batches, token, retries with backoff.

pub mod config;
pub mod queue;
pub mod radio;
pub mod uploader;

use std::sync::Arc;

use tokio::sync::Notify;

use config::Config;
use queue::Queue;

/// Runs the gateway until Ctrl-C or SIGTERM: the radio and the uploader side by side. Fails
/// at once, with a sentence saying why, when there is no D-Bus or no Bluetooth adapter.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let queue = Queue::open(&config.data_dir).await?;
    let radio = radio::Radio::open().await?;
    let more = Arc::new(Notify::new());
    tracing::info!(
        server = %config.server,
        queued = queue.depth().await?,
        "gateway started"
    );
    let uploader = uploader::Uploader::new(config.clone(), queue.clone());
    let upload = tokio::spawn(uploader.run(more.clone()));
    let listen = radio.run(config, queue.clone(), more);
    let mut upload = upload;
    tokio::select! {
        r = listen => r?,
        // The uploader loops for ever; ending means it failed.
        r = &mut upload => anyhow::bail!("the uploader stopped: {r:?}"),
        () = crate::shutdown_signal() => tracing::info!("gateway stopping"),
    }
    upload.abort();
    queue.close().await;
    Ok(())
}

/// `vitalbridge gateway status`: queue depth, last upload, devices seen, rejected readings.
/// It only reads the queue file, beside the running gateway; a moment when the gateway holds
/// the file (creating it, laying it out, checkpointing) is waited out.
pub async fn status(config: &Config) -> anyhow::Result<String> {
    let mut attempt = 0;
    loop {
        match status_once(config).await {
            // Busy, or created but not laid out yet: the gateway is starting.
            Err(e)
                if attempt < 20
                    && ["locked", "no such table"]
                        .iter()
                        .any(|w| e.to_string().contains(w)) =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn status_once(config: &Config) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let Some(queue) = Queue::open_read_only(&config.data_dir).await? else {
        return Ok(format!(
            "server:        {}\nqueued:        0 readings\nlast upload:   never\n\
             devices seen:  0 (the gateway has not run with data directory {})\n",
            config.server,
            config.data_dir.display()
        ));
    };
    let mut out = String::new();
    writeln!(out, "server:        {}", config.server)?;
    writeln!(out, "queued:        {} readings", queue.depth().await?)?;
    writeln!(
        out,
        "last upload:   {}",
        queue
            .state("last_upload")
            .await?
            .unwrap_or_else(|| "never".into())
    )?;
    let devices = queue.devices().await?;
    writeln!(out, "devices seen:  {}", devices.len())?;
    for d in devices {
        let name = [d.manufacturer, d.model, d.name]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            out,
            "  {}  {}  battery {}  last seen {}",
            d.address,
            if name.is_empty() { "?".into() } else { name },
            d.battery.map_or("?".into(), |b| format!("{b} %")),
            d.last_seen.as_deref().unwrap_or("never"),
        )?;
        if let (Some(c), Some(r)) = (d.last_characteristic, d.last_reading) {
            writeln!(out, "    last reading {c}: {r}")?;
        }
    }
    let rejected = queue.rejected(10).await?;
    if !rejected.is_empty() {
        writeln!(out, "rejected by the server (latest {}):", rejected.len())?;
        for (c, received, reason) in rejected {
            writeln!(out, "  {c} received {received}: {reason}")?;
        }
    }
    queue.close().await;
    Ok(out)
}

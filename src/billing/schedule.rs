//! The billing scheduler inside `serve` (issue 7, item 3): each recipient's month is run at the
//! end of its last day in the recipient's time zone (and its customers' zones, for a
//! distributor), once.
//!
//! Every process ticks; the one holding the `billing` lease runs what is due. The lease only
//! saves work: the run itself takes an advisory lock per recipient and month and finds invoices
//! already issued, so two processes that both ran would still issue each invoice once.

use std::time::Duration;

use super::activity::Month;
use super::run::{self, Report, Which};
use super::statement;
use crate::store::Store;
use crate::subscriptions::email::{Mailer, SmtpConfig};

/// Scheduler settings (`VB_BILLING`, `VB_BILLING_INTERVAL_SECS`, and the SMTP relay of
/// `VB_SMTP_URL` for statements).
#[derive(Debug, Clone)]
pub struct Config {
    pub enabled: bool,
    /// How often each process looks for months that have ended.
    pub interval: Duration,
    /// The relay statements go through; without one they wait in the outbox.
    pub smtp: Option<SmtpConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            interval: Duration::from_secs(60),
            smtp: None,
        }
    }
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct Ticked {
    /// The months that ran something, with what they did.
    pub months: Vec<(Month, Report)>,
    /// Statements sent.
    pub statements: u64,
    /// The day's RPM claims run, when this tick made it.
    pub claims: Option<super::claims::Report>,
}

/// The `billing_run` recipient that records each day's claims run.
const CLAIMS: &str = "rpm-claims";

/// How long a process holds the lease without renewing it: longer than a run of a large month.
const LEASE: Duration = Duration::from_secs(15 * 60);

/// How far east of UTC a time zone reaches (UTC+14:00, Pacific/Kiritimati): a month ends there
/// this much before it ends in UTC.
const EAST_MOST: i64 = 14 * 3_600_000_000;

/// The months a tick looks at, at `now` (microseconds): the last one that has ended somewhere
/// on Earth, and the one before it, which a server that was down at its end has yet to run.
pub fn months_at(now: i64) -> Vec<Month> {
    let last = Month::of_utc(now.saturating_add(EAST_MOST)).previous();
    vec![last.previous(), last]
}

/// One look at the clock: when this process holds the lease, runs the due recipients of each
/// month [`months_at`] `now`, then sends the statements due through `mailer`.
pub async fn tick(
    store: &Store,
    holder: &str,
    now: i64,
    mailer: Option<&Mailer>,
) -> anyhow::Result<Ticked> {
    let mut out = Ticked::default();
    if !store
        .take_lease("billing", holder, now, LEASE.as_micros() as i64)
        .await?
    {
        return Ok(out);
    }
    for month in months_at(now) {
        let report = run::run(store, month, Which::Due, Some(now), &|_| {}).await?;
        if report.recipients > 0 || !report.problems.is_empty() {
            out.months.push((month, report));
        }
    }
    // RPM claims once a day (UTC): periods end at the clinics' midnights, and a claim made a
    // few hours after its period ended is on time.
    let day = crate::store::format_instant(now)
        .get(..10)
        .unwrap_or_default()
        .to_owned();
    if !store.billed(&day).await?.contains(CLAIMS) {
        let rules = super::rpm::Rules::parse(super::rpm::RULES_2026).map_err(anyhow::Error::msg)?;
        out.claims = Some(super::claims::run(store, &rules, now).await?);
        store.mark_billed(CLAIMS, &day, now).await?;
    }
    if let Some(m) = mailer {
        out.statements = statement::send_due(store, m, now).await?;
    }
    Ok(out)
}

/// Starts the scheduler of this process.
pub fn start(store: Store, config: Config) {
    if !config.enabled {
        return;
    }
    let holder = uuid::Uuid::new_v4().to_string();
    let mailer = match config.smtp.as_ref().map(Mailer::new).transpose() {
        Ok(m) => m,
        Err(e) => {
            // `serve` checked the relay's settings when the subscription channel started.
            tracing::error!(error = %e, "billing: statements cannot be sent");
            None
        }
    };
    tokio::spawn(async move {
        loop {
            match tick(&store, &holder, crate::store::now_micros(), mailer.as_ref()).await {
                Ok(done) => {
                    if let Some(c) = &done.claims {
                        tracing::info!(
                            periods = c.periods,
                            made = c.made.len(),
                            existing = c.existing,
                            "billing: RPM claims run"
                        );
                        for p in &c.problems {
                            tracing::warn!(problem = %p, "billing: needs a person");
                        }
                    }
                    if done.statements > 0 {
                        tracing::info!(sent = done.statements, "billing: statements sent");
                    }
                    for (month, r) in done.months {
                        tracing::info!(
                            month = %month,
                            recipients = r.recipients,
                            devices = r.devices,
                            issued = r.issued.len(),
                            unchanged = r.unchanged,
                            corrected = r.corrected.len(),
                            cancelled = r.cancelled.len(),
                            "billing: month run"
                        );
                        for p in &r.problems {
                            tracing::warn!(month = %month, problem = %p, "billing: needs a person");
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "billing: run failed; retrying"),
            }
            tokio::time::sleep(config.interval).await;
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_microsecond()
    }

    #[test]
    fn months_looked_at_turn_when_the_first_zone_reaches_the_next_month() {
        let m = |y, mo| Month { year: y, month: mo };
        // 09:59 UTC on 31 October is 23:59 in Kiritimati: October has ended nowhere.
        assert_eq!(
            months_at(at("2026-10-31T09:59:00Z")),
            vec![m(2026, 8), m(2026, 9)]
        );
        assert_eq!(
            months_at(at("2026-10-31T10:00:00Z")),
            vec![m(2026, 9), m(2026, 10)]
        );
        // Across the year.
        assert_eq!(
            months_at(at("2027-01-15T00:00:00Z")),
            vec![m(2026, 11), m(2026, 12)]
        );
        assert_eq!(
            months_at(at("2027-02-01T00:00:00Z")),
            vec![m(2026, 12), m(2027, 1)]
        );
    }
}

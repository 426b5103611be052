//! The monthly run (issue 7, item 3): from the stored Device versions, Organizations and catalog,
//! each recipient's ChargeItems and Invoices for a month, written through the one write path
//! (`fhir::rest`, DESIGN.md rule 1) so that they are validated, owned, indexed and notified like
//! any other write.
//!
//! A recipient's month is one transaction under an advisory lock on `billing/{recipient}/{month}`,
//! so two server processes running the same month take turns, and the second finds the first's
//! invoices. Running a month again compares what it would issue with what is stored: the same
//! lines change nothing; different ones (a price corrected in the catalog, a time zone fixed)
//! cancel the issued Invoice (https://hl7.org/fhir/R4/invoice.html: `cancelled`, with
//! `cancelledReason`), abort its ChargeItems and issue a new one. An issued invoice is never
//! edited, and a `balanced` (paid) one is left alone and reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::tz::TimeZone;
use serde_json::{Value, json};

use super::activity::{self, Month, State};
use super::catalog::{self, Entry, InvoiceTo, Priced};
use super::invoice::{self, Heading, INVOICE_SYSTEM, Line};
use super::payment;
use crate::auth::policy::Policy;
use crate::fhir::parse::{Expect, validate_resource};
use crate::fhir::rest;
use crate::fhir::types::{ResourceId, ResourceType};
use crate::store::{Store, StoreTx, Version};

/// Device versions read per round trip.
const PAGE: usize = 2_000;

/// How far west of UTC a time zone reaches: a month ends up to this long after it ends in UTC
/// (UTC−12:00, https://www.iana.org/time-zones), so the scan reads Device versions up to then.
const WEST_MOST: i64 = 12 * 3_600_000_000;

/// Which recipients a run writes.
#[derive(Debug, Clone)]
pub enum Which {
    /// Every Organization whose month has ended (`vitalbridge bill`).
    All,
    /// Those whose month has ended and is not yet done (the scheduler).
    Due,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Devices read, of about `total`.
    Devices { done: u64, total: u64 },
    /// Recipients written.
    Recipients { done: u64, total: u64 },
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Devices read (each once, whatever its versions).
    pub devices: u64,
    /// ChargeItems written for new invoices.
    pub charge_items: u64,
    /// Invoices issued for the first time, as `Invoice/{id}`.
    pub issued: Vec<String>,
    /// Invoices found as they would be issued again.
    pub unchanged: u64,
    /// Issued invoices cancelled and replaced: (old, new).
    pub corrected: Vec<(String, String)>,
    /// Issued invoices cancelled with nothing left to invoice.
    pub cancelled: Vec<String>,
    /// Recipients done.
    pub recipients: u64,
    /// Recipients whose month has not yet ended in their (or a customer's) time zone.
    pub not_ended: Vec<String>,
    /// Recipients whose month could not be written (the reason is among the problems).
    pub failed: Vec<String>,
    /// What needs a person: equally specific prices, unknown time zones, a paid invoice that
    /// now differs. Ids only, never patient data.
    pub problems: Vec<String>,
}

/// An Organization as the run sees it.
struct Org {
    part_of: Option<String>,
    tz: TimeZone,
}

/// One device's month for one customer, priced by `entry` (an index into the catalog).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Owned {
    customer: String,
    device: String,
    entry: usize,
    first_day: u8,
    last_day: u8,
    days_active: u32,
}

/// All current resources of `ty`, parsed.
pub(super) async fn current_of(store: &Store, ty: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    let mut after = (ty.to_owned(), String::new());
    loop {
        let page = store.scan_current(Some((&after.0, &after.1)), 500).await?;
        let mut more = !page.is_empty();
        for v in page {
            if v.ty != ty {
                more = false;
                break;
            }
            after.1.clone_from(&v.id);
            if let Some(c) = &v.content {
                out.push((v.id.clone(), serde_json::from_str(c)?));
            }
        }
        if !more {
            return Ok(out);
        }
    }
}

/// The catalog entries (ChargeItemDefinitions claiming [`catalog::PROFILE`]); an entry that
/// does not read is a problem, and prices nothing.
fn catalog_of(definitions: &[(String, Value)], problems: &mut Vec<String>) -> Vec<Entry> {
    let claims = |v: &Value| {
        v["meta"]["profile"]
            .as_array()
            .is_some_and(|p| p.iter().any(|u| u == catalog::PROFILE))
    };
    let mut entries = Vec::new();
    for (id, v) in definitions.iter().filter(|(_, v)| claims(v)) {
        match catalog::read(v) {
            Ok(e) => entries.push(e),
            Err(errs) => problems.push(format!(
                "ChargeItemDefinition/{id} is not a valid catalog entry: {}",
                errs.iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
    entries
}

/// The end of `month` in `tz` (microseconds).
fn month_end(month: Month, tz: &TimeZone) -> Result<i64, String> {
    month.day_start(month.days() + 1, tz)
}

/// The last second of `month` in `tz`, as an RFC 3339 dateTime with the zone's offset.
fn last_second(month: Month, tz: &TimeZone) -> Result<String, String> {
    let end = month_end(month, tz)? - 1_000_000;
    let ts = jiff::Timestamp::from_microsecond(end).map_err(|e| e.to_string())?;
    Ok(ts
        .to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string())
}

/// Runs `month`: writes the recipients `which` selects whose month has ended by `now`
/// (microseconds; `None`: the clock).
pub async fn run(
    store: &Store,
    month: Month,
    which: Which,
    now: Option<i64>,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Report> {
    let now = now.unwrap_or_else(crate::store::now_micros);
    let mut report = Report::default();

    let mut orgs: BTreeMap<String, Org> = BTreeMap::new();
    for (id, v) in current_of(store, "Organization").await? {
        let tz = match activity::time_zone(&v) {
            Ok(tz) => tz,
            Err(e) => {
                report
                    .problems
                    .push(format!("Organization/{id} is not billed: {e}"));
                continue;
            }
        };
        let part_of = v["partOf"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Organization/"))
            .map(str::to_owned);
        orgs.insert(id, Org { part_of, tz });
    }
    let entries = catalog_of(
        &current_of(store, "ChargeItemDefinition").await?,
        &mut report.problems,
    );

    // When each recipient's month ends: in its own time zone and in those of the customers
    // whose devices it may be invoiced for.
    let mut ends: HashMap<&str, i64> = HashMap::new();
    for (id, org) in &orgs {
        let end = month_end(month, &org.tz).map_err(anyhow::Error::msg)?;
        for who in std::iter::once(id.as_str()).chain(org.part_of.as_deref()) {
            let e = ends.entry(who).or_insert(end);
            *e = (*e).max(end);
        }
    }

    let done = match which {
        Which::All => Default::default(),
        Which::Due => store.billed(&month.to_string()).await?,
    };
    let ended = |r: &str| ends.get(r).is_some_and(|e| now >= *e);
    if !orgs.keys().any(|r| !done.contains(r) && ended(r)) {
        // Nothing to write: no need to read the devices.
        return Ok(report);
    }

    let lines = scan_devices(store, month, &orgs, &entries, &mut report, progress).await?;
    let recipients: Vec<&String> = orgs.keys().filter(|r| !done.contains(r.as_str())).collect();
    let total = recipients.len() as u64;
    for (i, recipient) in recipients.into_iter().enumerate() {
        let mine = lines.get(recipient.as_str()).map_or(&[][..], Vec::as_slice);
        if !ended(recipient) {
            if !mine.is_empty() {
                report.not_ended.push(recipient.clone());
            }
            continue;
        }
        let tz = &orgs[recipient].tz;
        let bill = Bill {
            recipient,
            month,
            date: last_second(month, tz).map_err(anyhow::Error::msg)?,
            lines: mine,
            entries: &entries,
            now,
        };
        // One recipient that cannot be written (a store error, an invoice a profile refuses)
        // does not hold up the others; it stays due, so the scheduler tries it again.
        if let Err(e) = write_recipient(store, &bill, &mut report).await {
            report.failed.push(recipient.clone());
            report.problems.push(format!(
                "Organization/{recipient} {month} could not be written: {e:#}"
            ));
            continue;
        }
        store
            .mark_billed(recipient, &month.to_string(), crate::store::now_micros())
            .await?;
        report.recipients += 1;
        progress(Progress::Recipients {
            done: i as u64 + 1,
            total,
        });
    }
    Ok(report)
}

/// Reads every Device's versions up to the month's end and prices each device's days for each
/// customer: the lines of each recipient.
async fn scan_devices(
    store: &Store,
    month: Month,
    orgs: &BTreeMap<String, Org>,
    entries: &[Entry],
    report: &mut Report,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<BTreeMap<String, Vec<Owned>>> {
    let until = month_end(month, &TimeZone::UTC).map_err(anyhow::Error::msg)? + WEST_MOST;
    let total = store.count_of_type("Device").await?.max(0) as u64;
    let mut lines: BTreeMap<String, Vec<Owned>> = BTreeMap::new();
    let mut device: Vec<Version> = Vec::new();
    let mut after: Option<(String, i64)> = None;
    loop {
        let page = store
            .history_page(
                "Device",
                until,
                after.as_ref().map(|(id, v)| (id.as_str(), *v)),
                PAGE,
            )
            .await?;
        let last = page.is_empty();
        if let Some(v) = page.last() {
            after = Some((v.id.clone(), v.version_id));
        }
        for v in page {
            if device.first().is_some_and(|d| d.id != v.id) {
                price_device(&device, month, orgs, entries, report, &mut lines)?;
                device.clear();
                progress(Progress::Devices {
                    done: report.devices,
                    total,
                });
            }
            device.push(v);
        }
        if last {
            if !device.is_empty() {
                price_device(&device, month, orgs, entries, report, &mut lines)?;
            }
            progress(Progress::Devices {
                done: report.devices,
                total,
            });
            break;
        }
    }
    for l in lines.values_mut() {
        l.sort();
    }
    Ok(lines)
}

/// Adds the lines of one device (its versions, oldest first).
fn price_device(
    versions: &[Version],
    month: Month,
    orgs: &BTreeMap<String, Org>,
    entries: &[Entry],
    report: &mut Report,
    lines: &mut BTreeMap<String, Vec<Owned>>,
) -> anyhow::Result<()> {
    report.devices += 1;
    let contents: Vec<Option<Value>> = versions
        .iter()
        .map(|v| v.content.as_deref().map(serde_json::from_str).transpose())
        .collect::<Result<_, _>>()?;
    let states: Vec<State> = versions
        .iter()
        .zip(&contents)
        .map(|(v, c)| State::of_device(c.as_ref(), v.last_updated))
        .collect();
    // A customer unknown to the run (deleted, or with a bad time zone) is not billed.
    let known: Vec<State> = states
        .into_iter()
        .map(|mut s| {
            if s.owner.as_ref().is_some_and(|o| !orgs.contains_key(o)) {
                s.active = false;
            }
            s
        })
        .collect();
    let days = activity::customers_days(&known, month, |c| {
        orgs.get(c).map_or(TimeZone::UTC, |o| o.tz.clone())
    })
    .map_err(anyhow::Error::msg)?;
    let id = &versions[0].id;
    for (customer, days) in days {
        // Priced as the customer last had it in service.
        let Some(content) = known
            .iter()
            .zip(&contents)
            .rev()
            .find(|(s, _)| s.active && s.owner.as_deref() == Some(customer.as_str()))
            .and_then(|(_, c)| c.as_ref())
        else {
            continue;
        };
        let distributor = orgs[&customer].part_of.as_deref();
        let entry = match catalog::choose(entries, &Priced::of_device(content, distributor), month)
        {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                report
                    .problems
                    .push(format!("Device/{id} for Organization/{customer}: {e}"));
                continue;
            }
        };
        let recipient = match (entry.invoice_to, distributor) {
            (InvoiceTo::Distributor, Some(d)) if orgs.contains_key(d) => d,
            _ => customer.as_str(),
        };
        let (Some(first), Some(last)) = (days.first(), days.last()) else {
            continue;
        };
        let index = entries
            .iter()
            .position(|e| std::ptr::eq(e, entry))
            .unwrap_or_default();
        lines.entry(recipient.to_owned()).or_default().push(Owned {
            customer: customer.clone(),
            device: id.clone(),
            entry: index,
            first_day: *first,
            last_day: *last,
            days_active: days.len() as u32,
        });
    }
    Ok(())
}

/// The id of `recipient`'s billing Group: `billing-{recipient}`, or for an Organization id too
/// long for that (ids are at most 64 characters), a name derived from it (UUID v5).
pub fn group_id(recipient: &str) -> String {
    let id = format!("billing-{recipient}");
    if id.len() <= 64 {
        id
    } else {
        let derived = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, recipient.as_bytes());
        format!("billing-{}", derived.simple())
    }
}

/// One recipient's month.
struct Bill<'a> {
    recipient: &'a str,
    month: Month,
    /// The invoices' `date`.
    date: String,
    lines: &'a [Owned],
    entries: &'a [Entry],
    /// The run's clock (microseconds): statements are due from then.
    now: i64,
}

impl Bill<'_> {
    fn group(&self) -> String {
        group_id(self.recipient)
    }

    /// The lines in each currency.
    fn by_currency(&self) -> BTreeMap<&str, Vec<Line<'_>>> {
        let mut out: BTreeMap<&str, Vec<Line<'_>>> = BTreeMap::new();
        for l in self.lines {
            let entry = &self.entries[l.entry];
            out.entry(entry.monthly.currency.as_str())
                .or_default()
                .push(Line {
                    customer: &l.customer,
                    device: &l.device,
                    entry,
                    first_day: l.first_day,
                    last_day: l.last_day,
                    days_active: l.days_active,
                    days_in_month: self.month.days() as u32,
                });
        }
        out
    }

    fn heading(&self) -> Heading<'_> {
        Heading {
            recipient: self.recipient,
            issuer: None,
            month: self.month,
            date: &self.date,
        }
    }
}

/// A stored invoice of the month, in one currency.
struct Stored {
    id: String,
    invoice: Value,
}

/// `value` without what the store stamps (`id`, `meta`): what a run compares.
fn plain(mut value: Value) -> Value {
    if let Some(o) = value.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    value
}

fn valid(ty: &str, value: Value) -> anyhow::Result<crate::fhir::parse::ValidResource> {
    let ty = ResourceType::parse(ty).ok_or_else(|| anyhow::anyhow!("unknown type {ty}"))?;
    Ok(validate_resource(value, Expect::Create(ty))?)
}

async fn create(tx: &mut StoreTx, ty: &str, value: Value) -> anyhow::Result<String> {
    let res = valid(ty, value)?;
    Ok(rest::create(tx, res, None, None, &Policy::system())
        .await?
        .id)
}

async fn update(tx: &mut StoreTx, ty: &str, id: &str, mut value: Value) -> anyhow::Result<()> {
    value["id"] = json!(id);
    let t = ResourceType::parse(ty).ok_or_else(|| anyhow::anyhow!("unknown type {ty}"))?;
    let rid = ResourceId::parse(id).ok_or_else(|| anyhow::anyhow!("bad id {id}"))?;
    let res = validate_resource(value, Expect::Update(t, &rid))?;
    rest::update(tx, res, &rid, None, &Policy::system()).await?;
    Ok(())
}

async fn read(tx: &mut StoreTx, ty: &str, id: &str) -> anyhow::Result<Option<Value>> {
    let (Some(t), Some(rid)) = (ResourceType::parse(ty), ResourceId::parse(id)) else {
        return Ok(None);
    };
    Ok(tx
        .read(t, &rid)
        .await?
        .and_then(|v| v.content)
        .map(|c| serde_json::from_str(&c))
        .transpose()?)
}

/// The matches of a search of `ty` by `params`, as the server itself (every tenant).
pub(super) async fn system_search(
    db: &mut crate::store::Db<'_>,
    ty: &str,
    params: &[(&str, String)],
) -> anyhow::Result<Vec<Version>> {
    let t = ResourceType::parse(ty).ok_or_else(|| anyhow::anyhow!("unknown type {ty}"))?;
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let q = crate::search::parse(Some(t), &params, "");
    Ok(
        crate::search::engine::run_as(db, &[t], &q, &Policy::system())
            .await?
            .matches,
    )
}

/// The recipient's issued or balanced invoices of the month, by currency.
async fn stored_invoices(
    tx: &mut StoreTx,
    bill: &Bill<'_>,
) -> anyhow::Result<BTreeMap<String, Stored>> {
    // The invoice's date is the month's last second in the recipient's time zone: a window
    // around the month finds it whatever the zone was when it was issued.
    let first = bill.month.first();
    let from = first.checked_sub(jiff::Span::new().days(2))?;
    let to = bill
        .month
        .next()
        .first()
        .checked_add(jiff::Span::new().days(2))?;
    let params = [
        ("recipient", format!("Organization/{}", bill.recipient)),
        ("status", "issued,balanced".into()),
        ("date", format!("ge{from}")),
        ("date", format!("le{to}")),
        ("_count", "1000".into()),
    ];
    let found = system_search(&mut tx.reader(), "Invoice", &params).await?;
    let prefix = format!("{}/{}/", bill.recipient, bill.month);
    let mut out = BTreeMap::new();
    for v in found {
        let Some(invoice) = v.content.as_deref().map(serde_json::from_str::<Value>) else {
            continue;
        };
        let invoice = invoice?;
        let currency = invoice["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["system"] == INVOICE_SYSTEM)
            .find_map(|i| {
                i["value"]
                    .as_str()?
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
            });
        if let Some(c) = currency {
            out.insert(c, Stored { id: v.id, invoice });
        }
    }
    Ok(out)
}

/// The ChargeItem ids an invoice's lines reference, in order.
fn charge_item_ids(invoice: &Value) -> Vec<String> {
    invoice["lineItem"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["chargeItemReference"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("ChargeItem/"))
        .map(str::to_owned)
        .collect()
}

/// True when `stored` is what the run would issue for `lines`.
async fn same(
    tx: &mut StoreTx,
    bill: &Bill<'_>,
    stored: &Stored,
    lines: &[Line<'_>],
) -> anyhow::Result<bool> {
    let ids = charge_item_ids(&stored.invoice);
    if ids.len() != lines.len() {
        return Ok(false);
    }
    let group = bill.group();
    for (id, line) in ids.iter().zip(lines) {
        let want = invoice::charge_item(&group, bill.month, line);
        let Some(have) = read(tx, "ChargeItem", id).await? else {
            return Ok(false);
        };
        if plain(have) != want {
            return Ok(false);
        }
    }
    let want = invoice::invoice(&bill.heading(), lines, &ids).map_err(anyhow::Error::msg)?;
    let mut have = plain(stored.invoice.clone());
    // Being paid is not a difference in what was invoiced.
    have["status"] = want["status"].clone();
    if let Some(list) = have["extension"].as_array_mut() {
        list.retain(|e| e["url"] != payment::PAID);
    }
    Ok(have == want)
}

/// Cancels an issued invoice (never edited otherwise) and aborts its ChargeItems.
async fn cancel(tx: &mut StoreTx, stored: &Stored, reason: &str) -> anyhow::Result<()> {
    for id in charge_item_ids(&stored.invoice) {
        if let Some(mut item) = read(tx, "ChargeItem", &id).await? {
            item["status"] = json!("aborted");
            update(tx, "ChargeItem", &id, plain(item)).await?;
        }
    }
    let mut invoice = plain(stored.invoice.clone());
    invoice["status"] = json!("cancelled");
    invoice["cancelledReason"] = json!(reason);
    update(tx, "Invoice", &stored.id, invoice).await
}

/// Issues the invoice of `lines` with new ChargeItems; its id.
async fn issue(tx: &mut StoreTx, bill: &Bill<'_>, lines: &[Line<'_>]) -> anyhow::Result<String> {
    let group = bill.group();
    let mut ids = Vec::with_capacity(lines.len());
    for line in lines {
        let item = invoice::charge_item(&group, bill.month, line);
        ids.push(create(tx, "ChargeItem", item).await?);
    }
    let inv = invoice::invoice(&bill.heading(), lines, &ids).map_err(anyhow::Error::msg)?;
    create(tx, "Invoice", inv).await
}

/// The recipient's billing Group, the `subject` of its ChargeItems (R4 requires a Patient or a
/// Group there): created the first time.
async fn ensure_group(tx: &mut StoreTx, bill: &Bill<'_>) -> anyhow::Result<()> {
    let id = bill.group();
    if read(tx, "Group", &id).await?.is_some() {
        return Ok(());
    }
    let group = json!({
        "resourceType": "Group",
        "type": "device",
        "actual": true,
        "name": format!("Devices billed to Organization/{}", bill.recipient),
        "managingEntity": {"reference": format!("Organization/{}", bill.recipient)}
    });
    update(tx, "Group", &id, group).await
}

/// Writes one recipient's month in one transaction.
async fn write_recipient(
    store: &Store,
    bill: &Bill<'_>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    tx.lock_key(&format!("billing/{}/{}", bill.recipient, bill.month))
        .await?;
    let stored = stored_invoices(&mut tx, bill).await?;
    let wanted = bill.by_currency();
    let currencies: BTreeSet<&str> = wanted
        .keys()
        .copied()
        .chain(stored.keys().map(String::as_str))
        .collect();
    let mut charge_items = 0;
    for currency in currencies {
        let lines = wanted.get(currency).map_or(&[][..], Vec::as_slice);
        match stored.get(currency) {
            None if lines.is_empty() => {}
            None => {
                ensure_group(&mut tx, bill).await?;
                let id = issue(&mut tx, bill, lines).await?;
                tx.queue_statement(&id, bill.now).await?;
                charge_items += lines.len() as u64;
                report.issued.push(format!("Invoice/{id}"));
            }
            Some(s) if !lines.is_empty() && same(&mut tx, bill, s, lines).await? => {
                report.unchanged += 1;
            }
            Some(s) if s.invoice["status"] == "balanced" || payment::paid(&s.invoice) > 0 => {
                report.problems.push(format!(
                    "Invoice/{} is paid (in part) but {} {} now comes out differently; \
                     settle the difference by hand",
                    s.id, bill.recipient, bill.month
                ))
            }
            Some(s) if lines.is_empty() => {
                cancel(
                    &mut tx,
                    s,
                    &format!(
                        "corrected: nothing to invoice in {currency} for {}",
                        bill.month
                    ),
                )
                .await?;
                report.cancelled.push(format!("Invoice/{}", s.id));
            }
            Some(s) => {
                ensure_group(&mut tx, bill).await?;
                let id = issue(&mut tx, bill, lines).await?;
                tx.queue_statement(&id, bill.now).await?;
                cancel(&mut tx, s, &format!("corrected: replaced by Invoice/{id}")).await?;
                charge_items += lines.len() as u64;
                report
                    .corrected
                    .push((format!("Invoice/{}", s.id), format!("Invoice/{id}")));
            }
        }
    }
    tx.commit().await?;
    report.charge_items += charge_items;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipient_has_a_valid_billing_group_id() {
        assert_eq!(group_id("c1"), "billing-c1");
        let long = "o".repeat(64);
        let id = group_id(&long);
        assert!(id.len() <= 64 && id.starts_with("billing-"), "{id}");
        assert!(ResourceId::parse(&id).is_some());
        assert_ne!(id, group_id(&"p".repeat(64)));
    }
}

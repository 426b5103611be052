//! Statements (issue 7, item 6): each invoice the run issues is e-mailed to the recipient's
//! billing contact as a readable statement (HTML, with a plain-text part for mail clients that
//! show no HTML), through the SMTP relay the server is configured with (lettre).
//!
//! The run queues a statement in the transaction that issues the invoice
//! (`store::billing`, `statement_outbox`); the billing scheduler sends those due, and retries
//! with back-off when the relay is unreachable or the Organization has no billing address yet.
//! The billing contact is the Organization's `contact` whose `purpose` is `BILL`
//! (http://terminology.hl7.org/CodeSystem/contactentity-type), else its own e-mail `telecom`.

use std::fmt::Write as _;

use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use serde_json::Value;

use crate::fhir::types::{ResourceId, ResourceType};
use crate::store::Store;
use crate::subscriptions::email::Mailer;

const CONTACT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/contactentity-type";

/// The longest wait between two attempts at one statement.
const MAX_BACKOFF: i64 = 24 * 3_600_000_000;

fn email_of(telecom: &Value) -> Option<String> {
    telecom
        .as_array()?
        .iter()
        .find(|t| t["system"] == "email")
        .and_then(|t| t["value"].as_str())
        .map(str::to_owned)
}

/// Where an Organization's statements go: its billing contact's e-mail, else its own.
pub fn billing_address(org: &Value) -> Option<String> {
    let billing = org["contact"].as_array().into_iter().flatten().find(|c| {
        c["purpose"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|k| k["system"] == CONTACT_TYPE && k["code"] == "BILL")
    });
    billing
        .and_then(|c| email_of(&c["telecom"]))
        .or_else(|| email_of(&org["telecom"]))
}

use crate::auth::authorize::escape as esc;

fn money(v: &Value) -> String {
    match (v["value"].is_number(), v["currency"].as_str()) {
        (true, Some(c)) => format!("{} {c}", v["value"]),
        _ => String::new(),
    }
}

/// One line of a statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatementLine {
    pub item: String,
    pub device: String,
    pub customer: String,
    pub period: String,
    pub days: String,
    pub net: String,
    pub tax: String,
}

impl StatementLine {
    /// The line of `line_item` (an `Invoice.lineItem`) and its ChargeItem.
    pub fn of(line_item: &Value, charge_item: &Value) -> StatementLine {
        let component = |ty: &str| {
            line_item["priceComponent"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == ty)
                .map(|c| money(&c["amount"]))
                .unwrap_or_default()
        };
        let coding = &charge_item["code"]["coding"][0];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        StatementLine {
            item: coding["display"]
                .as_str()
                .or(coding["code"].as_str())
                .unwrap_or_default()
                .to_owned(),
            device: s(&charge_item["productReference"]["reference"]),
            customer: s(&charge_item["requestingOrganization"]["reference"]),
            period: format!(
                "{} – {}",
                s(&charge_item["occurrencePeriod"]["start"]),
                s(&charge_item["occurrencePeriod"]["end"])
            ),
            days: charge_item["quantity"]["value"].to_string(),
            net: component("base"),
            tax: component("tax"),
        }
    }
}

/// The statement of `invoice` (id `id`) to `org`: subject, HTML and plain text.
pub fn render(
    id: &str,
    invoice: &Value,
    org: &Value,
    lines: &[StatementLine],
) -> (String, String, String) {
    let name = org["name"].as_str().unwrap_or("your organization");
    let period = &invoice["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == super::invoice::PERIOD)
        .map(|e| e["valuePeriod"].clone())
        .unwrap_or_default();
    let month = period["start"]
        .as_str()
        .and_then(|s| s.get(..7))
        .unwrap_or_default();
    let (net, gross) = (money(&invoice["totalNet"]), money(&invoice["totalGross"]));
    let status = invoice["status"].as_str().unwrap_or_default();
    let subject = format!("[vitalbridge] Statement for {month}: {gross} (Invoice {id})");

    let mut text = format!(
        "Statement for {name}, {month}\n\nInvoice: Invoice/{id} ({status})\n\
         Date: {date}\nDevices and hubs billed: {count}\n\n",
        date = invoice["date"].as_str().unwrap_or_default(),
        count = lines.len()
    );
    for (i, l) in lines.iter().enumerate() {
        let _ = writeln!(
            text,
            "{n}. {item}, {device}{customer}, {period}, {days} days: {net}{tax}",
            n = i + 1,
            item = l.item,
            device = l.device,
            customer = if l.customer.is_empty() {
                String::new()
            } else {
                format!(" at {}", l.customer)
            },
            period = l.period,
            days = l.days,
            net = l.net,
            tax = if l.tax.is_empty() {
                String::new()
            } else {
                format!(" + tax {}", l.tax)
            },
        );
    }
    let _ = write!(text, "\nTotal net: {net}\nTotal due: {gross}\n");

    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font-family:sans-serif;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         td.n{{text-align:right}}</style></head><body>\
         <h1>Statement for {name}</h1><p>Billing period: {month}<br>Invoice: Invoice/{id} \
         ({status})<br>Date: {date}</p><table><thead><tr><th>#</th><th>Item</th>\
         <th>Device</th><th>Customer</th><th>Period</th><th>Days</th><th>Net</th><th>Tax</th>\
         </tr></thead><tbody>",
        title = esc(&subject),
        name = esc(name),
        month = esc(month),
        id = esc(id),
        status = esc(status),
        date = esc(invoice["date"].as_str().unwrap_or_default()),
    );
    for (i, l) in lines.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            i + 1,
            esc(&l.item),
            esc(&l.device),
            esc(&l.customer),
            esc(&l.period),
            esc(&l.days),
            esc(&l.net),
            esc(&l.tax)
        );
    }
    let _ = write!(
        html,
        "</tbody></table><p>Total net: <b>{}</b><br>Total due: <b>{}</b></p></body></html>",
        esc(&net),
        esc(&gross)
    );
    (subject, html, text)
}

/// Reads what the statement of Invoice `id` shows, and where it goes. `Err` with the reason
/// when it cannot be sent now; `Ok(None)` when it is not to be sent (the invoice was cancelled
/// or deleted before its statement went out).
async fn prepare(store: &Store, id: &str, from: &Mailbox) -> anyhow::Result<Option<Message>> {
    let read = |ty: &'static str, id: String| async move {
        let (Some(t), Some(rid)) = (ResourceType::parse(ty), ResourceId::parse(&id)) else {
            return Ok::<_, anyhow::Error>(None);
        };
        Ok(store
            .read(t, &rid)
            .await?
            .and_then(|v| v.content)
            .map(|c| serde_json::from_str::<Value>(&c))
            .transpose()?)
    };
    let Some(invoice) = read("Invoice", id.to_owned()).await? else {
        return Ok(None);
    };
    if invoice["status"] == "cancelled" || invoice["status"] == "entered-in-error" {
        return Ok(None);
    }
    let org_id = invoice["recipient"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Organization/"))
        .unwrap_or_default()
        .to_owned();
    let org = read("Organization", org_id.clone())
        .await?
        .ok_or_else(|| anyhow::anyhow!("Organization/{org_id} is not known"))?;
    let to = billing_address(&org)
        .ok_or_else(|| anyhow::anyhow!("Organization/{org_id} has no billing e-mail address"))?;
    let mut lines = Vec::new();
    for li in invoice["lineItem"].as_array().into_iter().flatten() {
        let ci = match li["chargeItemReference"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ChargeItem/"))
        {
            Some(ci) => read("ChargeItem", ci.to_owned()).await?.unwrap_or_default(),
            None => Value::Null,
        };
        lines.push(StatementLine::of(li, &ci));
    }
    Ok(Some(message(
        from,
        &to,
        render(id, &invoice, &org, &lines),
    )?))
}

/// The message of a statement from `from` to `to`: HTML with a plain-text alternative.
pub fn message(
    from: &Mailbox,
    to: &str,
    (subject, html, text): (String, String, String),
) -> anyhow::Result<Message> {
    let to: Mailbox = to
        .parse()
        .map_err(|_| anyhow::anyhow!("the billing e-mail address is not valid"))?;
    Ok(Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .multipart(MultiPart::alternative_plain_html(text, html))?)
}

/// Sends the statements due at `now` through `mailer`; how many went out.
pub async fn send_due(store: &Store, mailer: &Mailer, now: i64) -> anyhow::Result<u64> {
    let mut sent = 0;
    for q in store.due_statements(now, 100).await? {
        let backoff = |attempts: i32| {
            let wait = 60_000_000i64.saturating_mul(1 << attempts.clamp(0, 20));
            now + wait.min(MAX_BACKOFF)
        };
        let outcome = match prepare(store, &q.invoice_id, mailer.from()).await {
            Ok(None) => Err(("not sent: the invoice was cancelled".to_owned(), i64::MAX)),
            Ok(Some(message)) => match mailer.deliver(message).await {
                Ok(()) => Ok(()),
                Err(e) => Err((e, backoff(q.attempts))),
            },
            Err(e) => Err((e.to_string(), backoff(q.attempts))),
        };
        match outcome {
            Ok(()) => {
                store.statement_tried(&q.invoice_id, now, None, 0).await?;
                sent += 1;
            }
            Err((why, next)) => {
                tracing::warn!(invoice = %q.invoice_id, reason = %why, "billing: statement not sent");
                store
                    .statement_tried(&q.invoice_id, now, Some(&why), next)
                    .await?;
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_billing_contact_comes_before_the_organizations_own_address() {
        let mut org = json!({"resourceType": "Organization",
            "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "desk@c.example"}]});
        assert_eq!(billing_address(&org).as_deref(), Some("desk@c.example"));
        org["contact"] = json!([
            {"purpose": {"coding": [{"system": CONTACT_TYPE, "code": "ADMIN"}]},
             "telecom": [{"system": "email", "value": "admin@c.example"}]},
            {"purpose": {"coding": [{"system": CONTACT_TYPE, "code": "BILL"}]},
             "telecom": [{"system": "email", "value": "bills@c.example"}]}
        ]);
        assert_eq!(billing_address(&org).as_deref(), Some("bills@c.example"));
        assert_eq!(
            billing_address(&json!({"resourceType": "Organization"})),
            None
        );
    }

    #[test]
    fn text_from_resources_is_escaped_in_the_html() {
        let invoice = json!({"status": "issued", "date": "2026-10-31T23:59:59+00:00",
            "totalNet": {"value": 1, "currency": "USD"}, "totalGross": {"value": 1, "currency": "USD"},
            "extension": [{"url": super::super::invoice::PERIOD,
                           "valuePeriod": {"start": "2026-10-01", "end": "2026-10-31"}}]});
        let org = json!({"name": "<script>alert('x')</script> & Co"});
        let line = StatementLine {
            item: "<b>cuff</b>".into(),
            ..Default::default()
        };
        let (subject, html, text) = render("i1", &invoice, &org, &[line]);
        assert_eq!(
            subject,
            "[vitalbridge] Statement for 2026-10: 1 USD (Invoice i1)"
        );
        assert!(
            !html.contains("<script>") && !html.contains("<b>cuff"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; Co"));
        assert!(
            text.contains("1. <b>cuff</b>"),
            "plain text is not HTML: {text}"
        );
    }
}

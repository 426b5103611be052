//! A customer's month as FHIR (issue 7, item 3): one ChargeItem per device and catalog entry,
//! and one Invoice over them. Pure, no I/O (DESIGN.md rule 5): the run stores what this builds.
//!
//! - ChargeItem (https://hl7.org/fhir/R4/chargeitem.html): `billed` (it is written with the
//!   invoice that includes it), `code` the catalog entry's item, `subject` the recipient's
//!   billing Group (R4 requires a Patient or Group there), `requestingOrganization` the
//!   customer that had the device in service, `productReference` the Device,
//!   `occurrencePeriod` the first and last day it was active in the month, `quantity` the days
//!   active, `priceOverride` the net amount of the month, `definitionCanonical` the entry.
//! - Invoice (https://hl7.org/fhir/R4/invoice.html): `issued`, `recipient` the Organization
//!   billed, `issuer` the platform or the distributor, `date` the end of the month in the
//!   recipient's time zone, one `lineItem` per ChargeItem with `base` and `tax` price
//!   components, `totalNet` and `totalGross`, the month as the `billing-period` extension and an
//!   identifier `{recipient}/{YYYY-MM}` that makes a second run of the month find it.

use serde_json::{Value, json};

use super::activity::Month;
use super::catalog::{Entry, ITEM_SYSTEM, Item};
use super::price::{self, Money};

/// Identifies each invoice by recipient and month.
pub const INVOICE_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/invoice";
/// The month an invoice is for.
pub const PERIOD: &str = "https://vitalbridge.dev/fhir/StructureDefinition/billing-period";

/// One device's month under one catalog entry.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// The customer that had the device in service (the recipient, or one of a distributor's
    /// customers).
    pub customer: &'a str,
    pub device: &'a str,
    pub entry: &'a Entry,
    /// The days (1-based) it was active for the recipient's customer.
    pub first_day: u8,
    pub last_day: u8,
    pub days_active: u32,
    pub days_in_month: u32,
}

impl Line<'_> {
    pub fn net(&self) -> i64 {
        price::net(
            self.entry.monthly.minor,
            self.entry.proration,
            self.days_active,
            self.days_in_month,
        )
    }

    pub fn tax(&self) -> i64 {
        price::tax(self.net(), self.entry.tax)
    }

    fn currency(&self) -> &str {
        &self.entry.monthly.currency
    }
}

fn money(minor: i64, currency: &str) -> Value {
    let m = Money {
        minor,
        currency: currency.to_owned(),
    };
    // A decimal in the currency's digits: serde_json keeps the text (arbitrary precision).
    let value: Value = serde_json::from_str(&m.decimal()).unwrap_or(Value::Null);
    json!({"value": value, "currency": currency})
}

fn item_code(entry: &Entry) -> Value {
    match &entry.item {
        Item::DeviceType { system, code } => json!({"coding": [{"system": system, "code": code}]}),
        Item::Hub => json!({"coding": [{"system": ITEM_SYSTEM, "code": "hub"}]}),
        Item::AnyDevice => json!({"coding": [{"system": ITEM_SYSTEM, "code": "device"}]}),
    }
}

/// The ChargeItem of `line` in `month`, for the recipient whose billing Group is `group`.
pub fn charge_item(group: &str, month: Month, line: &Line<'_>) -> Value {
    let day = |d: u8| format!("{month}-{d:02}");
    let mut c = json!({
        "resourceType": "ChargeItem",
        "status": "billed",
        "code": item_code(line.entry),
        "subject": {"reference": format!("Group/{group}")},
        "occurrencePeriod": {"start": day(line.first_day), "end": day(line.last_day)},
        "quantity": {
            "value": line.days_active,
            "unit": "d",
            "system": "http://unitsofmeasure.org",
            "code": "d"
        },
        "priceOverride": money(line.net(), line.currency()),
        "requestingOrganization": {"reference": format!("Organization/{}", line.customer)},
        "productReference": {"reference": format!("Device/{}", line.device)},
        "definitionUri": [format!("ChargeItemDefinition/{}", line.entry.id)]
    });
    if let Some(url) = &line.entry.url {
        c["definitionCanonical"] = json!([url]);
    }
    c
}

/// Who is billed, by whom, for which month.
#[derive(Debug, Clone)]
pub struct Heading<'a> {
    pub recipient: &'a str,
    /// `Organization` id of the issuer, if the platform has one.
    pub issuer: Option<&'a str>,
    pub month: Month,
    /// The end of the month in the recipient's time zone (RFC 3339).
    pub date: &'a str,
}

/// The invoice of `lines`, whose ChargeItems have the ids `charge_items` (same order). All
/// lines are in one currency: a recipient with prices in several gets one invoice per currency
/// from the run, and this refuses a mix.
pub fn invoice(
    h: &Heading<'_>,
    lines: &[Line<'_>],
    charge_items: &[String],
) -> Result<Value, String> {
    let Some(first) = lines.first() else {
        return Err("an invoice needs at least one line".into());
    };
    let currency = first.currency();
    if let Some(other) = lines.iter().find(|l| l.currency() != currency) {
        return Err(format!(
            "one invoice is in one currency: {currency} and {}",
            other.currency()
        ));
    }
    if lines.len() != charge_items.len() {
        return Err("one ChargeItem per line".into());
    }
    let mut net = 0i64;
    let mut tax = 0i64;
    let mut items = Vec::with_capacity(lines.len());
    for (i, (line, ci)) in lines.iter().zip(charge_items).enumerate() {
        let (n, t) = (line.net(), line.tax());
        net = net.checked_add(n).ok_or("the invoice total is too large")?;
        tax = tax.checked_add(t).ok_or("the invoice total is too large")?;
        let mut components = vec![json!({"type": "base", "amount": money(n, currency)})];
        if line.entry.tax.0 != 0 {
            components.push(json!({
                "type": "tax",
                "factor": serde_json::from_str::<Value>(&line.entry.tax.decimal()).unwrap_or(Value::Null),
                "amount": money(t, currency)
            }));
        }
        items.push(json!({
            "sequence": i + 1,
            "chargeItemReference": {"reference": format!("ChargeItem/{ci}")},
            "priceComponent": components
        }));
    }
    let gross = net
        .checked_add(tax)
        .ok_or("the invoice total is too large")?;
    let start = format!("{}-01", h.month);
    let end = format!("{}-{:02}", h.month, h.month.days());
    let mut inv = json!({
        "resourceType": "Invoice",
        "extension": [{"url": PERIOD, "valuePeriod": {"start": start, "end": end}}],
        "identifier": [{"system": INVOICE_SYSTEM, "value": format!("{}/{}/{currency}", h.recipient, h.month)}],
        "status": "issued",
        "recipient": {"reference": format!("Organization/{}", h.recipient)},
        "date": h.date,
        "lineItem": items,
        "totalNet": money(net, currency),
        "totalGross": money(gross, currency)
    });
    if let Some(issuer) = h.issuer {
        inv["issuer"] = json!({"reference": format!("Organization/{issuer}")});
    }
    Ok(inv)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::price::{Proration, Rate};
    use super::*;

    fn entry(id: &str, value: &str, currency: &str, proration: Proration, tax: i64) -> Entry {
        Entry {
            id: id.into(),
            url: Some(format!("https://example.org/price/{id}")),
            item: Item::DeviceType {
                system: "urn:iso:std:iso:11073:10101".into(),
                code: "528391".into(),
            },
            monthly: Money::parse(value, currency).unwrap(),
            tax: Rate(tax),
            proration,
            distributor: None,
            invoice_to: super::super::catalog::InvoiceTo::Customer,
            from: None,
            until: None,
            active: true,
        }
    }

    fn line<'a>(device: &'a str, e: &'a Entry, first: u8, last: u8) -> Line<'a> {
        Line {
            customer: "c1",
            device,
            entry: e,
            first_day: first,
            last_day: last,
            days_active: u32::from(last - first + 1),
            days_in_month: 31,
        }
    }

    fn heading(month: Month) -> Heading<'static> {
        Heading {
            recipient: "c1",
            issuer: Some("platform"),
            month,
            date: "2026-10-31T23:59:59-04:00",
        }
    }

    #[test]
    fn an_invoice_adds_up_to_the_cent() {
        let oct = Month::parse("2026-10").unwrap();
        let whole = entry("bp", "25.00", "USD", Proration::AnyDay, 72_500);
        let part = entry("bp-pr", "25.00", "USD", Proration::ProRata, 72_500);
        let lines = [
            line("d1", &whole, 3, 4),
            line("d2", &part, 1, 10),
            line("d3", &part, 16, 31),
        ];
        let ids: Vec<String> = ["ci1", "ci2", "ci3"].map(String::from).to_vec();
        let inv = invoice(&heading(oct), &lines, &ids).unwrap();
        // 2500 + 806 + 1290 = 4596 net; tax 181.25→181, 58.435→58, 93.525→94: 333.
        assert_eq!(inv["totalNet"], json!({"value": 45.96, "currency": "USD"}));
        assert_eq!(
            inv["totalGross"],
            json!({"value": 49.29, "currency": "USD"})
        );
        assert_eq!(inv["totalNet"]["value"].to_string(), "45.96");
        assert_eq!(inv["lineItem"].as_array().unwrap().len(), 3);
        assert_eq!(inv["lineItem"][1]["sequence"], 2);
        assert_eq!(
            inv["lineItem"][1]["chargeItemReference"]["reference"],
            "ChargeItem/ci2"
        );
        assert_eq!(
            inv["lineItem"][1]["priceComponent"][0]["amount"]["value"].to_string(),
            "8.06"
        );
        assert_eq!(
            inv["lineItem"][1]["priceComponent"][1]["amount"]["value"].to_string(),
            "0.58"
        );
        assert_eq!(
            inv["lineItem"][1]["priceComponent"][1]["factor"].to_string(),
            "0.0725"
        );
        assert_eq!(inv["status"], "issued");
        assert_eq!(inv["recipient"]["reference"], "Organization/c1");
        assert_eq!(inv["issuer"]["reference"], "Organization/platform");
        assert_eq!(inv["identifier"][0]["value"], "c1/2026-10/USD");
        assert_eq!(inv["extension"][0]["valuePeriod"]["end"], "2026-10-31");
        let mut sum_net = 0.0;
        for li in inv["lineItem"].as_array().unwrap() {
            sum_net += li["priceComponent"][0]["amount"]["value"].as_f64().unwrap();
        }
        assert!((sum_net - 45.96).abs() < 1e-9);
    }

    /// What the run builds passes the checks every write passes: R4 structure, strictly.
    #[test]
    fn invoices_and_charge_items_are_valid_r4() {
        let oct = Month::parse("2026-10").unwrap();
        let e = entry("bp", "25.00", "USD", Proration::ProRata, 72_500);
        let l = line("d1", &e, 2, 30);
        let mut inv = invoice(&heading(oct), std::slice::from_ref(&l), &["ci1".into()]).unwrap();
        let mut ci = charge_item("billing-c1", oct, &l);
        for (v, ty) in [(&mut inv, "Invoice"), (&mut ci, "ChargeItem")] {
            v["id"] = json!("x1");
            let ty = crate::fhir::types::ResourceType::parse(ty).unwrap();
            let checked = crate::fhir::parse::check_structure(v, ty);
            assert!(checked.is_ok(), "{ty:?}: {:?}", checked.err());
        }
    }

    #[test]
    fn a_mix_of_currencies_or_nothing_is_no_invoice() {
        let oct = Month::parse("2026-10").unwrap();
        let usd = entry("a", "25", "USD", Proration::AnyDay, 0);
        let eur = entry("b", "20", "EUR", Proration::AnyDay, 0);
        let lines = [line("d1", &usd, 1, 31), line("d2", &eur, 1, 31)];
        let err = invoice(&heading(oct), &lines, &["x".into(), "y".into()]).unwrap_err();
        assert!(err.contains("USD") && err.contains("EUR"), "{err}");
        assert!(invoice(&heading(oct), &[], &[]).is_err());
        let one = [line("d1", &usd, 1, 31)];
        assert!(invoice(&heading(oct), &one, &[]).is_err());
        // Without tax there is no tax component, and gross is net.
        let inv = invoice(&heading(oct), &one, &["x".into()]).unwrap();
        assert_eq!(
            inv["lineItem"][0]["priceComponent"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(inv["totalGross"], inv["totalNet"]);
    }

    #[test]
    fn a_charge_item_names_the_device_the_days_and_the_price() {
        let oct = Month::parse("2026-10").unwrap();
        let part = entry("bp-pr", "25.00", "USD", Proration::ProRata, 0);
        let c = charge_item("billing-c1", oct, &line("d2", &part, 1, 10));
        assert_eq!(c["status"], "billed");
        assert_eq!(c["subject"]["reference"], "Group/billing-c1");
        assert_eq!(c["productReference"]["reference"], "Device/d2");
        assert_eq!(
            c["occurrencePeriod"],
            json!({"start": "2026-10-01", "end": "2026-10-10"})
        );
        assert_eq!(c["quantity"]["value"], 10);
        assert_eq!(c["priceOverride"]["value"].to_string(), "8.06");
        assert_eq!(
            c["definitionCanonical"][0],
            "https://example.org/price/bp-pr"
        );
        assert_eq!(c["definitionUri"][0], "ChargeItemDefinition/bp-pr");
        assert_eq!(c["code"]["coding"][0]["code"], "528391");
        assert_eq!(c["requestingOrganization"]["reference"], "Organization/c1");
    }
}

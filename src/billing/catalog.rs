//! The price catalog (issue 7, item 1): ChargeItemDefinition resources, managed by admins, read
//! here into what the monthly run needs, and the choice of the entry that prices a device.
//! Pure, no I/O (DESIGN.md rule 5).
//!
//! A catalog entry (https://hl7.org/fhir/R4/chargeitemdefinition.html):
//!
//! - `status` `active` (other entries price nothing), `effectivePeriod` optional (dates);
//! - `code`: what it prices, a coding matched against `Device.type`, or in [`ITEM_SYSTEM`]
//!   `hub` (a Device that is a hub: it has a hub-client identifier) or `device` (any other
//!   device without an entry of its own type);
//! - `propertyGroup[0].priceComponent`: one `base` with `amount` (value and ISO 4217 currency):
//!   the price per month; optionally one `tax` with `factor`, the tax rate (0.2 = 20 %);
//! - extension [`PRORATION`] (`any-day`, the default, or `pro-rata`);
//! - extension [`DISTRIBUTOR`] (`Organization/{id}`): a price for that distributor's customers
//!   only, chosen over the general one;
//! - extension [`INVOICE_TO`] (`customer`, the default, or `distributor`): who is invoiced.

use serde_json::Value;

use super::activity::Month;
use super::price::{Money, Proration, Rate};

/// The profile a ChargeItemDefinition claims to be a catalog entry (`fhir-profiles/`); the run
/// prices with those only, and writes of them are checked by [`read`].
pub const PROFILE: &str = "https://vitalbridge.dev/fhir/StructureDefinition/vb-catalog-entry";
pub const ITEM_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/billing-item";
pub const PRORATION: &str = "https://vitalbridge.dev/fhir/StructureDefinition/billing-proration";
pub const DISTRIBUTOR: &str =
    "https://vitalbridge.dev/fhir/StructureDefinition/billing-distributor";
pub const INVOICE_TO: &str = "https://vitalbridge.dev/fhir/StructureDefinition/billing-invoice-to";

/// What an entry prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Devices with this `type` coding.
    DeviceType { system: String, code: String },
    /// Hubs.
    Hub,
    /// Devices no type-specific entry prices.
    AnyDevice,
}

/// Who receives the invoice for what an entry prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceTo {
    Customer,
    Distributor,
}

/// A catalog entry as the run uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `ChargeItemDefinition.id`, for references from ChargeItems.
    pub id: String,
    pub url: Option<String>,
    pub item: Item,
    pub monthly: Money,
    pub tax: Rate,
    pub proration: Proration,
    /// A distributor's own price: `Organization` id.
    pub distributor: Option<String>,
    pub invoice_to: InvoiceTo,
    /// First and last day it applies (inclusive), if limited.
    pub from: Option<jiff::civil::Date>,
    pub until: Option<jiff::civil::Date>,
    pub active: bool,
}

pub use crate::fhir::types::Invalid;

fn invalid(expression: &str, message: impl Into<String>) -> Invalid {
    Invalid::new("ChargeItemDefinition", expression, message)
}

fn extension<'a>(resource: &'a Value, url: &str) -> Option<&'a Value> {
    resource["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
}

/// A date or the first day of a partial date (`2026`, `2026-10`, `2026-10-01`, or the date part
/// of a dateTime).
fn date(s: &str, end: bool) -> Option<jiff::civil::Date> {
    let day = s.get(..10).unwrap_or(s);
    let parts: Vec<&str> = day.split('-').collect();
    let num = |i: usize| parts.get(i).and_then(|p| p.parse::<i16>().ok());
    let year = num(0)?;
    let (month, d) = match parts.len() {
        1 => (if end { 12 } else { 1 }, None),
        2 => (num(1)? as i8, None),
        3 => (num(1)? as i8, Some(num(2)? as i8)),
        _ => return None,
    };
    let first = jiff::civil::Date::new(year, month, 1).ok()?;
    match (d, end) {
        (Some(d), _) => jiff::civil::Date::new(year, month, d).ok(),
        (None, false) => Some(first),
        (None, true) => Some(first.last_of_month()),
    }
}

/// Reads a ChargeItemDefinition as a catalog entry; every problem found, each at its element.
pub fn read(resource: &Value) -> Result<Entry, Vec<Invalid>> {
    let mut problems = Vec::new();
    let active = resource["status"] == "active";
    let codings = resource["code"]["coding"].as_array();
    let item = match codings.map(Vec::as_slice) {
        Some([c]) => {
            let system = c["system"].as_str().unwrap_or_default();
            let code = c["code"].as_str().unwrap_or_default();
            match (system, code) {
                (ITEM_SYSTEM, "hub") => Some(Item::Hub),
                (ITEM_SYSTEM, "device") => Some(Item::AnyDevice),
                (ITEM_SYSTEM, other) => {
                    problems.push(invalid(
                        "code",
                        format!("{other:?} is not a billing item (hub or device)"),
                    ));
                    None
                }
                (s, c) if !s.is_empty() && !c.is_empty() => Some(Item::DeviceType {
                    system: s.to_owned(),
                    code: c.to_owned(),
                }),
                _ => {
                    problems.push(invalid("code", "the coding needs a system and a code"));
                    None
                }
            }
        }
        _ => {
            problems.push(invalid(
                "code",
                format!(
                    "one coding: a Device.type coding, or {ITEM_SYSTEM} hub or device, says what \
                     is priced"
                ),
            ));
            None
        }
    };
    let components = resource["propertyGroup"][0]["priceComponent"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if resource["propertyGroup"]
        .as_array()
        .is_some_and(|g| g.len() > 1)
    {
        problems.push(invalid(
            "propertyGroup",
            "one property group: the price applies to every device the entry prices",
        ));
    }
    let bases: Vec<&Value> = components.iter().filter(|c| c["type"] == "base").collect();
    let taxes: Vec<&Value> = components.iter().filter(|c| c["type"] == "tax").collect();
    if components
        .iter()
        .any(|c| c["type"] != "base" && c["type"] != "tax")
    {
        problems.push(invalid(
            "propertyGroup.priceComponent.type",
            "only base and tax components are billed",
        ));
    }
    let monthly = match bases.as_slice() {
        [b] => {
            let amount = &b["amount"];
            let value = amount["value"].as_number().map(ToString::to_string);
            let currency = amount["currency"].as_str().unwrap_or_default();
            match value.map(|v| Money::parse(&v, currency)) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) => {
                    problems.push(invalid("propertyGroup.priceComponent.amount", e));
                    None
                }
                None => {
                    problems.push(invalid(
                        "propertyGroup.priceComponent.amount",
                        "the base component needs an amount with value and currency",
                    ));
                    None
                }
            }
        }
        _ => {
            problems.push(invalid(
                "propertyGroup.priceComponent",
                "exactly one base component: the price per month",
            ));
            None
        }
    };
    let tax = match taxes.as_slice() {
        [] => Rate::default(),
        [t] => match t["factor"].as_number().map(|f| Rate::parse(&f.to_string())) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                problems.push(invalid("propertyGroup.priceComponent.factor", e));
                Rate::default()
            }
            None => {
                problems.push(invalid(
                    "propertyGroup.priceComponent.factor",
                    "a tax component needs its rate as factor (0.2 for 20 %)",
                ));
                Rate::default()
            }
        },
        _ => {
            problems.push(invalid(
                "propertyGroup.priceComponent",
                "at most one tax component",
            ));
            Rate::default()
        }
    };
    let proration = match extension(resource, PRORATION) {
        None => Proration::AnyDay,
        Some(e) => match e["valueCode"].as_str().and_then(Proration::parse) {
            Some(p) => p,
            None => {
                problems.push(invalid(
                    "extension",
                    "billing-proration is valueCode any-day or pro-rata",
                ));
                Proration::AnyDay
            }
        },
    };
    let distributor = match extension(resource, DISTRIBUTOR) {
        None => None,
        Some(e) => match e["valueReference"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Organization/"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
        {
            Some(id) => Some(id.to_owned()),
            None => {
                problems.push(invalid(
                    "extension",
                    "billing-distributor is a valueReference to Organization/{id}",
                ));
                None
            }
        },
    };
    let invoice_to = match extension(resource, INVOICE_TO).map(|e| e["valueCode"].as_str()) {
        None => InvoiceTo::Customer,
        Some(Some("customer")) => InvoiceTo::Customer,
        Some(Some("distributor")) => InvoiceTo::Distributor,
        Some(_) => {
            problems.push(invalid(
                "extension",
                "billing-invoice-to is valueCode customer or distributor",
            ));
            InvoiceTo::Customer
        }
    };
    if invoice_to == InvoiceTo::Distributor && distributor.is_none() {
        problems.push(invalid(
            "extension",
            "an entry invoiced to the distributor names it (billing-distributor)",
        ));
    }
    let period = &resource["effectivePeriod"];
    let mut bound = |field: &str, end: bool| match period[field].as_str() {
        None => None,
        Some(s) => {
            let d = date(s, end);
            if d.is_none() {
                problems.push(invalid(
                    &format!("effectivePeriod.{field}"),
                    format!("{s:?} is not a date"),
                ));
            }
            d
        }
    };
    let from = bound("start", false);
    let until = bound("end", true);
    if let (Some(f), Some(u)) = (from, until)
        && u < f
    {
        problems.push(invalid("effectivePeriod", "the end is before the start"));
    }
    match (item, monthly) {
        (Some(item), Some(monthly)) if problems.is_empty() => Ok(Entry {
            id: resource["id"].as_str().unwrap_or_default().to_owned(),
            url: resource["url"].as_str().map(str::to_owned),
            item,
            monthly,
            tax,
            proration,
            distributor,
            invoice_to,
            from,
            until,
            active,
        }),
        _ => Err(problems),
    }
}

/// What the choice of a price looks at in a device.
#[derive(Debug, Clone, Default)]
pub struct Priced<'a> {
    /// `Device.type` codings: (system, code).
    pub types: Vec<(&'a str, &'a str)>,
    pub hub: bool,
    /// The distributor of the customer that had it, if any.
    pub distributor: Option<&'a str>,
}

impl<'a> Priced<'a> {
    /// What prices `device` (a Device's JSON) for a customer of `distributor`: its `type`
    /// codings, and whether it is a hub (a hub-client identifier,
    /// `ingest::pipeline::HUB_CLIENT_SYSTEM`).
    pub fn of_device(device: &'a Value, distributor: Option<&'a str>) -> Priced<'a> {
        let types = device["type"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c["system"].as_str()?, c["code"].as_str()?)))
            .collect();
        let hub = device["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["system"] == crate::ingest::pipeline::HUB_CLIENT_SYSTEM);
        Priced {
            types,
            hub,
            distributor,
        }
    }
}

impl Entry {
    /// In force on some day of `month`.
    pub fn in_force(&self, month: Month) -> bool {
        let first = month.first();
        let last = first.last_of_month();
        self.active && self.from.is_none_or(|f| f <= last) && self.until.is_none_or(|u| u >= first)
    }

    /// How specifically it prices `d`: `None` when it does not; higher is more specific.
    fn fits(&self, d: &Priced<'_>) -> Option<u8> {
        let item = match (&self.item, d.hub) {
            (Item::Hub, true) => 1,
            (Item::DeviceType { system, code }, false)
                if d.types
                    .iter()
                    .any(|(s, c)| *s == system.as_str() && *c == code.as_str()) =>
            {
                1
            }
            (Item::AnyDevice, false) => 0,
            _ => return None,
        };
        let who = match (&self.distributor, d.distributor) {
            (None, _) => 0,
            (Some(mine), Some(theirs)) if mine == theirs => 2,
            (Some(_), _) => return None,
        };
        Some(who + item)
    }
}

/// The entry that prices `d` in `month`: a distributor's own price before the general one,
/// a type's price before the any-device one. Several equally specific entries are an error
/// naming them: the catalog must say which price holds.
pub fn choose<'e>(
    entries: &'e [Entry],
    d: &Priced<'_>,
    month: Month,
) -> Result<Option<&'e Entry>, String> {
    let fitting: Vec<(u8, &Entry)> = entries
        .iter()
        .filter(|e| e.in_force(month))
        .filter_map(|e| Some((e.fits(d)?, e)))
        .collect();
    let Some(best) = fitting.iter().map(|(s, _)| *s).max() else {
        return Ok(None);
    };
    let top: Vec<&Entry> = fitting
        .iter()
        .filter(|(s, _)| *s == best)
        .map(|(_, e)| *e)
        .collect();
    match top.as_slice() {
        [one] => Ok(Some(one)),
        many => {
            let mut ids: Vec<&str> = many.iter().map(|e| e.id.as_str()).collect();
            ids.sort_unstable();
            Err(format!(
                "ChargeItemDefinitions {} price the same device equally in {month}",
                ids.join(", ")
            ))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    const MDC: &str = "urn:iso:std:iso:11073:10101";

    fn entry(id: &str, code: Value, value: f64, extra: Value) -> Value {
        let mut e = json!({
            "resourceType": "ChargeItemDefinition",
            "id": id,
            "url": format!("https://example.org/price/{id}"),
            "status": "active",
            "code": {"coding": [code]},
            "propertyGroup": [{"priceComponent": [
                {"type": "base", "amount": {"value": value, "currency": "USD"}},
                {"type": "tax", "factor": 0.0725}
            ]}]
        });
        if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                e.insert(k.clone(), v.clone());
            }
        }
        e
    }

    fn cuff() -> Value {
        json!({"system": MDC, "code": "528391"})
    }

    fn item(code: &str) -> Value {
        json!({"system": ITEM_SYSTEM, "code": code})
    }

    fn month(s: &str) -> Month {
        Month::parse(s).unwrap()
    }

    #[test]
    fn an_entry_reads_into_price_tax_and_settings() {
        let e = read(&entry(
            "bp",
            cuff(),
            25.0,
            json!({"extension": [
                {"url": PRORATION, "valueCode": "pro-rata"},
                {"url": DISTRIBUTOR, "valueReference": {"reference": "Organization/d1"}},
                {"url": INVOICE_TO, "valueCode": "distributor"}
            ], "effectivePeriod": {"start": "2026-01", "end": "2026-12-31"}}),
        ))
        .unwrap();
        assert_eq!(
            e.item,
            Item::DeviceType {
                system: MDC.into(),
                code: "528391".into()
            }
        );
        assert_eq!(e.monthly, Money::parse("25.00", "USD").unwrap());
        assert_eq!(e.tax, Rate(72_500));
        assert_eq!(e.proration, Proration::ProRata);
        assert_eq!(e.distributor.as_deref(), Some("d1"));
        assert_eq!(e.invoice_to, InvoiceTo::Distributor);
        assert_eq!(e.from, Some(jiff::civil::date(2026, 1, 1)));
        assert_eq!(e.until, Some(jiff::civil::date(2026, 12, 31)));
        let hub = read(&entry("hub", item("hub"), 10.0, json!({}))).unwrap();
        assert_eq!(hub.item, Item::Hub);
        assert_eq!(hub.proration, Proration::AnyDay);
        assert_eq!(hub.invoice_to, InvoiceTo::Customer);
    }

    #[test]
    fn a_bad_entry_is_refused_at_each_element() {
        let cases = [
            (json!({"code": {"coding": []}}), "ChargeItemDefinition.code"),
            (
                json!({"code": {"coding": [item("gadget")]}}),
                "ChargeItemDefinition.code",
            ),
            (
                json!({"propertyGroup": [{"priceComponent": [{"type": "tax", "factor": 0.1}]}]}),
                "ChargeItemDefinition.propertyGroup.priceComponent",
            ),
            (
                json!({"propertyGroup": [{"priceComponent": [
                    {"type": "base", "amount": {"value": 25.001, "currency": "USD"}}]}]}),
                "ChargeItemDefinition.propertyGroup.priceComponent.amount",
            ),
            (
                json!({"propertyGroup": [{"priceComponent": [
                    {"type": "base", "amount": {"value": 25, "currency": "dollars"}}]}]}),
                "ChargeItemDefinition.propertyGroup.priceComponent.amount",
            ),
            (
                json!({"propertyGroup": [{"priceComponent": [
                    {"type": "base", "amount": {"value": 25, "currency": "USD"}},
                    {"type": "tax", "factor": 1.5}]}]}),
                "ChargeItemDefinition.propertyGroup.priceComponent.factor",
            ),
            (
                json!({"propertyGroup": [{"priceComponent": [
                    {"type": "base", "amount": {"value": 25, "currency": "USD"}},
                    {"type": "discount", "factor": 0.1}]}]}),
                "ChargeItemDefinition.propertyGroup.priceComponent.type",
            ),
            (
                json!({"extension": [{"url": PRORATION, "valueCode": "weekly"}]}),
                "ChargeItemDefinition.extension",
            ),
            (
                json!({"extension": [{"url": INVOICE_TO, "valueCode": "distributor"}]}),
                "ChargeItemDefinition.extension",
            ),
            (
                json!({"extension": [{"url": DISTRIBUTOR, "valueReference": {"reference": "Patient/p"}}]}),
                "ChargeItemDefinition.extension",
            ),
            (
                json!({"effectivePeriod": {"start": "2026-13-01"}}),
                "ChargeItemDefinition.effectivePeriod.start",
            ),
            (
                json!({"effectivePeriod": {"start": "2026-06-01", "end": "2026-05-31"}}),
                "ChargeItemDefinition.effectivePeriod",
            ),
        ];
        for (change, at) in cases {
            let problems = read(&entry("x", cuff(), 25.0, change.clone())).unwrap_err();
            assert!(
                problems.iter().any(|p| p.expression == at),
                "{change} → {problems:?}"
            );
        }
    }

    #[test]
    fn the_most_specific_entry_in_force_prices_a_device() {
        let entries: Vec<Entry> = [
            entry("any", item("device"), 5.0, json!({})),
            entry("bp", cuff(), 25.0, json!({})),
            entry("hub", item("hub"), 10.0, json!({})),
            entry(
                "bp-d1",
                cuff(),
                20.0,
                json!({"extension": [{"url": DISTRIBUTOR, "valueReference": {"reference": "Organization/d1"}}]}),
            ),
            entry(
                "old-bp",
                cuff(),
                30.0,
                json!({"effectivePeriod": {"end": "2025-12-31"}}),
            ),
            entry("retired", item("hub"), 99.0, json!({"status": "retired"})),
        ]
        .iter()
        .map(|v| read(v).unwrap())
        .collect();
        let oct = month("2026-10");
        let chosen = |types: Vec<(&str, &str)>, hub: bool, distributor: Option<&str>| {
            choose(
                &entries,
                &Priced {
                    types,
                    hub,
                    distributor,
                },
                oct,
            )
            .unwrap()
            .map(|e| e.id.clone())
        };
        assert_eq!(
            chosen(vec![(MDC, "528391")], false, None).as_deref(),
            Some("bp")
        );
        assert_eq!(
            chosen(vec![(MDC, "528391")], false, Some("d1")).as_deref(),
            Some("bp-d1")
        );
        assert_eq!(
            chosen(vec![(MDC, "528391")], false, Some("d2")).as_deref(),
            Some("bp")
        );
        assert_eq!(
            chosen(vec![(MDC, "528409")], false, None).as_deref(),
            Some("any")
        );
        assert_eq!(chosen(vec![], false, None).as_deref(), Some("any"));
        assert_eq!(chosen(vec![], true, None).as_deref(), Some("hub"));
        // In December 2025 the old price was in force beside the new one: equally specific.
        let err = choose(
            &entries,
            &Priced {
                types: vec![(MDC, "528391")],
                ..Default::default()
            },
            month("2025-12"),
        )
        .unwrap_err();
        assert!(
            err.contains("bp, old-bp") && err.contains("2025-12"),
            "{err}"
        );
        // Nothing prices a hub when only retired entries would.
        let only_retired: Vec<Entry> = entries
            .iter()
            .filter(|e| e.id == "retired")
            .cloned()
            .collect();
        assert_eq!(
            choose(
                &only_retired,
                &Priced {
                    hub: true,
                    ..Default::default()
                },
                oct
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn a_device_is_priced_by_its_types_or_as_a_hub() {
        let cuff = json!({"resourceType": "Device",
            "type": {"coding": [{"system": MDC, "code": "528391"}, {"display": "no code"}]}});
        let p = Priced::of_device(&cuff, Some("d1"));
        assert_eq!(p.types, vec![(MDC, "528391")]);
        assert!(!p.hub);
        assert_eq!(p.distributor, Some("d1"));
        let hub = json!({"resourceType": "Device", "identifier": [
            {"system": crate::ingest::pipeline::HUB_CLIENT_SYSTEM, "value": "hub-7"}]});
        assert!(Priced::of_device(&hub, None).hub);
    }

    #[test]
    fn partial_dates_bound_whole_months_and_years() {
        assert_eq!(date("2026", false), Some(jiff::civil::date(2026, 1, 1)));
        assert_eq!(date("2026", true), Some(jiff::civil::date(2026, 12, 31)));
        assert_eq!(date("2028-02", true), Some(jiff::civil::date(2028, 2, 29)));
        assert_eq!(
            date("2026-10-05T10:00:00Z", false),
            Some(jiff::civil::date(2026, 10, 5))
        );
        assert_eq!(date("2026-02-30", false), None);
        assert_eq!(date("soon", false), None);
    }
}

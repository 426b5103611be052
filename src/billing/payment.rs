//! Payments (issue 7, item 4): `POST Invoice/[id]/$record-payment` records a payment as a
//! PaymentReconciliation (https://hl7.org/fhir/R4/paymentreconciliation.html) whose detail
//! names the Invoice, and keeps the amount paid so far on the Invoice (extension [`PAID`]).
//! When the payments reach `totalGross` the Invoice becomes `balanced`
//! (https://hl7.org/fhir/R4/valueset-invoice-status.html); until then it stays `issued` and
//! the extension shows what is still owed. Nothing of what was invoiced (lines, totals) is
//! edited.
//!
//! A payment given with an `identifier` (the payer's transaction number) is recorded once: a
//! retry of the same payment answers the invoice as it stands.

use serde_json::{Value, json};

use super::price::Money;
use crate::auth::policy::{Perm, Policy};
use crate::fhir::parse::{Expect, validate_resource};
use crate::fhir::rest::{self, Lookup};
use crate::fhir::types::{Invalid, ResourceId, ResourceType};
use crate::http::error::{ApiError, Issue};
use crate::store::StoreTx;

/// The amount paid so far on an Invoice (valueMoney).
pub const PAID: &str = "https://vitalbridge.dev/fhir/StructureDefinition/billing-paid";

/// A payment as the operation's Parameters give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub amount: Money,
    /// `YYYY-MM-DD`.
    pub date: String,
    /// The payer's reference for it (an Identifier), if given.
    pub identifier: Option<Value>,
}

fn invalid(parameter: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        expression: format!("Parameters.parameter.where(name = '{parameter}')"),
        message: message.into(),
    }
}

/// A Money element's amount, exactly as written.
fn money_of(v: &Value) -> Result<Money, String> {
    let currency = v["currency"].as_str().ok_or("the amount has no currency")?;
    if !v["value"].is_number() {
        return Err("the amount has no value".into());
    }
    // serde_json keeps a number's text (arbitrary precision): `10.50` stays `10.50`.
    Money::parse(&v["value"].to_string(), currency)
}

/// Reads the operation's Parameters: `amount` (valueMoney, more than zero), `date`
/// (valueDate, `today` without it) and `identifier` (valueIdentifier, optional).
pub fn read_parameters(parameters: &Value, today: &str) -> Result<Payment, Vec<Invalid>> {
    if parameters["resourceType"] != "Parameters" {
        return Err(vec![Invalid {
            expression: "Parameters".into(),
            message: "the body is a Parameters resource".into(),
        }]);
    }
    let find = |name: &str| {
        parameters["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
    };
    let mut problems = Vec::new();
    let amount = match find("amount").map(|p| money_of(&p["valueMoney"])) {
        None => {
            problems.push(invalid(
                "amount",
                "the amount paid (valueMoney) is required",
            ));
            None
        }
        Some(Err(e)) => {
            problems.push(invalid("amount", e));
            None
        }
        Some(Ok(m)) if m.minor <= 0 => {
            problems.push(invalid("amount", "a payment is more than zero"));
            None
        }
        Some(Ok(m)) => Some(m),
    };
    let date = match find("date") {
        None => Some(today.to_owned()),
        Some(p) => match p["valueDate"].as_str() {
            Some(d) if d.len() == 10 && d.parse::<jiff::civil::Date>().is_ok() => {
                Some(d.to_owned())
            }
            _ => {
                problems.push(invalid(
                    "date",
                    "the payment date is a valueDate (YYYY-MM-DD)",
                ));
                None
            }
        },
    };
    let identifier = match find("identifier") {
        None => None,
        Some(p) if p["valueIdentifier"]["value"].is_string() => Some(p["valueIdentifier"].clone()),
        Some(_) => {
            problems.push(invalid(
                "identifier",
                "the payer's reference is a valueIdentifier with a value",
            ));
            None
        }
    };
    match (amount, date) {
        (Some(amount), Some(date)) if problems.is_empty() => Ok(Payment {
            amount,
            date,
            identifier,
        }),
        _ => Err(problems),
    }
}

/// An Invoice's `totalGross` and what has been paid of it, in its currency's minor units.
pub fn standing(invoice: &Value) -> Result<(Money, i64), String> {
    let gross = money_of(&invoice["totalGross"])?;
    let paid = invoice["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == PAID)
        .map(|e| money_of(&e["valueMoney"]))
        .transpose()?
        .map_or(0, |m| m.minor);
    Ok((gross, paid))
}

/// The amount paid so far, as the Invoice's [`PAID`] extension holds it: 0 without one.
pub fn paid(invoice: &Value) -> i64 {
    standing(invoice).map_or(0, |(_, p)| p)
}

/// The PaymentReconciliation of `payment` of Invoice `invoice_id`, paid by `payer`
/// (`Organization/{id}`), recorded at `created` (RFC 3339).
pub fn reconciliation(invoice_id: &str, payer: &str, payment: &Payment, created: &str) -> Value {
    let amount = json!({
        "value": serde_json::from_str::<Value>(&payment.amount.decimal()).unwrap_or(Value::Null),
        "currency": payment.amount.currency
    });
    let mut r = json!({
        "resourceType": "PaymentReconciliation",
        "status": "active",
        "created": created,
        "paymentIssuer": {"reference": payer},
        "outcome": "complete",
        "disposition": format!("Payment of Invoice/{invoice_id}"),
        "paymentDate": payment.date,
        "paymentAmount": amount,
        "detail": [{
            "type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/payment-type",
                "code": "payment"
            }]},
            "request": {"reference": format!("Invoice/{invoice_id}")},
            "date": payment.date,
            "amount": amount
        }]
    });
    if let Some(i) = &payment.identifier {
        r["identifier"] = json!([i]);
    }
    r
}

/// The invoice after a payment of `amount`: the amount paid so far in [`PAID`], and `balanced`
/// once that reaches `totalGross`. Refuses a payment in another currency, or of an invoice
/// that is not `issued`.
pub fn apply(invoice: &Value, amount: &Money) -> Result<Value, String> {
    if invoice["status"] != "issued" {
        return Err(format!(
            "the Invoice is {}; payments are recorded against issued invoices",
            invoice["status"].as_str().unwrap_or("without a status")
        ));
    }
    let (gross, before) = standing(invoice)?;
    if gross.currency != amount.currency {
        return Err(format!(
            "the Invoice is in {}, the payment in {}",
            gross.currency, amount.currency
        ));
    }
    let now = before
        .checked_add(amount.minor)
        .ok_or("the amount is too large")?;
    let paid = Money {
        minor: now,
        currency: gross.currency.clone(),
    };
    let mut out = invoice.clone();
    let ext = json!({"url": PAID, "valueMoney": {
        "value": serde_json::from_str::<Value>(&paid.decimal()).unwrap_or(Value::Null),
        "currency": paid.currency
    }});
    let list = out["extension"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["url"] != PAID)
        .chain(std::iter::once(ext))
        .collect::<Vec<_>>();
    out["extension"] = json!(list);
    if now >= gross.minor {
        out["status"] = json!("balanced");
    }
    Ok(out)
}

/// Records `payment` of Invoice `id` as `policy`'s caller, in `tx`: the invoice after it.
pub async fn record(
    tx: &mut StoreTx,
    id: &ResourceId,
    payment: &Payment,
    policy: &Policy,
    created: &str,
) -> Result<Value, ApiError> {
    let invoice_ty = ResourceType::parse("Invoice")
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("Invoice")))?;
    let pr_ty = ResourceType::parse("PaymentReconciliation")
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("PaymentReconciliation")))?;
    policy.check("Invoice", Perm::Update)?;
    policy.check("PaymentReconciliation", Perm::Create)?;
    // Payments of one invoice take turns: each adds to what the one before left.
    tx.lock_key(&format!("invoice-payment/{id}")).await?;
    let current = rest::current_for(&mut Lookup::Tx(tx), policy, invoice_ty, id)
        .await?
        .and_then(|v| v.content.map(|c| (v.version_id, c)))
        .ok_or_else(|| ApiError::NotFound(format!("Invoice/{id} is not known")))?;
    let (version, content) = current;
    let invoice: Value = serde_json::from_str(&content).map_err(ApiError::internal)?;
    let payer = invoice["recipient"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let unprocessable = |m: String| {
        ApiError::Unprocessable(vec![
            Issue::error("business-rule", m).at("Parameters.parameter.where(name = 'amount')"),
        ])
    };
    let after = match apply(&invoice, &payment.amount) {
        Ok(a) => a,
        // A retry of a payment already recorded is answered with the invoice as it stands,
        // even once that payment balanced it.
        Err(_) if recorded(tx, payment, policy).await? => return Ok(invoice),
        Err(m) => return Err(unprocessable(m)),
    };
    let pr = validate_resource(
        reconciliation(id.as_str(), &payer, payment, created),
        Expect::Create(pr_ty),
    )?;
    let if_none_exist = payment.identifier.as_ref().map(identifier_query);
    let o = rest::create(tx, pr, None, if_none_exist.as_deref(), policy).await?;
    if o.status == axum::http::StatusCode::OK {
        // Recorded before: nothing more.
        return Ok(invoice);
    }
    let res = validate_resource(after, Expect::Update(invoice_ty, id))?;
    let o = rest::update(tx, res, id, Some(version), policy).await?;
    o.content
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the updated Invoice has no content")))
}

/// The search finding a payment by the payer's reference.
fn identifier_query(i: &Value) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let value = enc(i["value"].as_str().unwrap_or_default());
    match i["system"].as_str() {
        Some(system) => format!("identifier={}|{value}", enc(system)),
        None => format!("identifier={value}"),
    }
}

/// True when a payment with `payment`'s identifier is already recorded.
async fn recorded(tx: &mut StoreTx, payment: &Payment, policy: &Policy) -> Result<bool, ApiError> {
    let Some(i) = &payment.identifier else {
        return Ok(false);
    };
    let ty = ResourceType::parse("PaymentReconciliation")
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("PaymentReconciliation")))?;
    Ok(
        !rest::conditional_matches(tx, ty, &identifier_query(i), policy)
            .await?
            .is_empty(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn params(amount: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "amount", "valueMoney": amount},
            {"name": "identifier", "valueIdentifier": {"system": "https://bank.example/tx", "value": "T1"}}
        ]})
    }

    fn invoice(gross: &str, paid: Option<&str>) -> Value {
        let mut i = json!({
            "resourceType": "Invoice",
            "status": "issued",
            "totalGross": {"value": serde_json::from_str::<Value>(gross).unwrap(), "currency": "USD"},
            "extension": [{"url": "https://example.org/other", "valueString": "kept"}]
        });
        if let Some(p) = paid {
            i["extension"]
                .as_array_mut()
                .unwrap()
                .push(json!({"url": PAID, "valueMoney":
                {"value": serde_json::from_str::<Value>(p).unwrap(), "currency": "USD"}}));
        }
        i
    }

    fn usd(s: &str) -> Money {
        Money::parse(s, "USD").unwrap()
    }

    #[test]
    fn parameters_give_the_exact_amount_a_date_and_the_payers_reference() {
        let p = read_parameters(
            &params(serde_json::from_str(r#"{"value": 10.50, "currency": "USD"}"#).unwrap()),
            "2026-12-02",
        )
        .unwrap();
        assert_eq!(p.amount, usd("10.50"));
        assert_eq!(p.date, "2026-12-02");
        assert_eq!(p.identifier.unwrap()["value"], "T1");
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases = [
            (json!({"value": 0, "currency": "USD"}), "more than zero"),
            (
                json!({"value": 1.005, "currency": "USD"}),
                "at most 2 decimals",
            ),
            (json!({"value": 5, "currency": "usd"}), "ISO 4217"),
            (json!({"currency": "USD"}), "no value"),
        ];
        for (amount, why) in cases {
            let e = read_parameters(&params(amount.clone()), "2026-12-02").unwrap_err();
            assert!(e[0].message.contains(why), "{amount}: {e:?}");
            assert!(e[0].expression.contains("'amount'"));
        }
        let e = read_parameters(
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "amount", "valueMoney": {"value": 1, "currency": "USD"}},
                {"name": "date", "valueDate": "2026-02-30"}]}),
            "2026-12-02",
        )
        .unwrap_err();
        assert!(e[0].expression.contains("'date'"), "{e:?}");
        assert!(read_parameters(&json!({"resourceType": "Invoice"}), "2026-12-02").is_err());
    }

    #[test]
    fn partial_payments_add_up_until_the_invoice_is_balanced() {
        let i = invoice("91.43", None);
        let after = apply(&i, &usd("50")).unwrap();
        assert_eq!(after["status"], "issued");
        assert_eq!(standing(&after).unwrap(), (usd("91.43"), 5000));
        // Other extensions are kept, and the paid one is replaced, not repeated.
        let after = apply(&after, &usd("41.43")).unwrap();
        assert_eq!(after["status"], "balanced");
        assert_eq!(paid(&after), 9143);
        let exts = after["extension"].as_array().unwrap();
        assert_eq!(exts.len(), 2);
        assert_eq!(exts[0]["valueString"], "kept");
        assert_eq!(exts[1]["valueMoney"]["value"].to_string(), "91.43");
        // An overpayment balances it too (the credit is what the paid amount exceeds).
        assert_eq!(
            apply(&invoice("10.00", Some("9.00")), &usd("5")).unwrap()["status"],
            "balanced"
        );
    }

    #[test]
    fn payments_of_other_currencies_or_of_invoices_not_issued_are_refused() {
        let e = apply(&invoice("10.00", None), &Money::parse("10", "EUR").unwrap()).unwrap_err();
        assert!(e.contains("in USD, the payment in EUR"), "{e}");
        let mut cancelled = invoice("10.00", None);
        cancelled["status"] = json!("cancelled");
        assert!(
            apply(&cancelled, &usd("1"))
                .unwrap_err()
                .contains("cancelled")
        );
        let balanced = apply(&invoice("10.00", None), &usd("10")).unwrap();
        assert!(
            apply(&balanced, &usd("1"))
                .unwrap_err()
                .contains("balanced")
        );
    }

    #[test]
    fn the_reconciliation_has_what_r4_requires_and_names_the_invoice() {
        let p = read_parameters(
            &params(json!({"value": 20, "currency": "USD"})),
            "2026-12-02",
        )
        .unwrap();
        let r = reconciliation("inv-1", "Organization/c1", &p, "2026-12-02T10:00:00Z");
        for required in ["status", "created", "paymentDate", "paymentAmount"] {
            assert!(!r[required].is_null(), "{required}");
        }
        assert_eq!(r["detail"][0]["request"]["reference"], "Invoice/inv-1");
        assert_eq!(r["paymentAmount"]["value"].to_string(), "20.00");
        assert_eq!(r["identifier"][0]["value"], "T1");
        assert_eq!(
            identifier_query(&r["identifier"][0]),
            "identifier=https%3A%2F%2Fbank.example%2Ftx|T1"
        );
    }
}

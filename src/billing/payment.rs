//! Payments (issue 7, item 4): a PaymentReconciliation
//! (https://hl7.org/fhir/R4/paymentreconciliation.html) whose `detail.request` names an Invoice
//! pays it by the detail's `amount` (negative for a refund), in the transaction that creates it:
//! `POST PaymentReconciliation` (also in a Bundle), or `POST Invoice/[id]/$record-payment` with
//! Parameters, which builds one. The Invoice keeps the amount paid so far (extension [`PAID`]).
//! Recorded payments are a ledger: they are not updated or deleted (422); a correction is a
//! new PaymentReconciliation.
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

/// A Money element's amount, which may be negative (a refund).
fn signed_money_of(v: &Value) -> Result<Money, String> {
    let text = v["value"].to_string();
    match text.strip_prefix('-') {
        Some(abs) => {
            let mut m = money_of(&json!({"value": serde_json::from_str::<Value>(abs)
                .map_err(|_| "the amount is not a number")?, "currency": v["currency"]}))?;
            m.minor = -m.minor;
            Ok(m)
        }
        None => money_of(v),
    }
}

/// The invoices an active PaymentReconciliation pays: each `detail` whose `request` is
/// `Invoice/{id}`, with its `amount` (negative: a refund). Other details are left alone.
pub fn invoice_details(pr: &Value) -> Result<Vec<(String, Money)>, Vec<Invalid>> {
    if pr["status"] != "active" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for d in pr["detail"].as_array().into_iter().flatten() {
        let Some(id) = d["request"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Invoice/"))
        else {
            continue;
        };
        match signed_money_of(&d["amount"]) {
            Ok(m) if m.minor != 0 => out.push((id.to_owned(), m)),
            Ok(_) => problems.push(Invalid::new(
                "PaymentReconciliation",
                "detail.amount",
                "a payment of an invoice is not zero",
            )),
            Err(e) => problems.push(Invalid::new(
                "PaymentReconciliation",
                "detail.amount",
                format!("the amount paid of Invoice/{id}: {e}"),
            )),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// True when `pr` pays or refunds an invoice (or tries to).
pub fn pays_invoices(pr: &Value) -> bool {
    pr["detail"].as_array().into_iter().flatten().any(|d| {
        d["request"]["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with("Invoice/"))
    })
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

/// The invoice after a payment of `amount` (negative: a refund): the amount paid so far in
/// [`PAID`], `balanced` once that reaches `totalGross` and `issued` again below it. Refuses a
/// payment in another currency, a payment of an invoice that is not `issued`, and a refund of
/// more than was paid.
pub fn apply(invoice: &Value, amount: &Money) -> Result<Value, String> {
    let status = invoice["status"].as_str().unwrap_or("without a status");
    let open = status == "issued" || (amount.minor < 0 && status == "balanced");
    if !open {
        return Err(format!(
            "the Invoice is {status}; payments are recorded against issued invoices"
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
    if now < 0 {
        return Err(format!(
            "a refund of {} is more than the {} paid",
            Money {
                minor: -amount.minor,
                currency: gross.currency.clone()
            }
            .decimal(),
            Money {
                minor: before,
                currency: gross.currency.clone()
            }
            .decimal()
        ));
    }
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
    out["status"] = json!(if now >= gross.minor {
        "balanced"
    } else {
        "issued"
    });
    Ok(out)
}

/// Records `payment` of Invoice `id` as `policy`'s caller, in `tx`: a PaymentReconciliation
/// (which pays the invoice as it is created, [`apply_recorded`]); the invoice after it.
pub async fn record(
    tx: &mut StoreTx,
    id: &ResourceId,
    payment: &Payment,
    policy: &Policy,
    created: &str,
) -> Result<Value, ApiError> {
    let pr_ty = ResourceType::parse("PaymentReconciliation")
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("PaymentReconciliation")))?;
    policy.check("PaymentReconciliation", Perm::Create)?;
    let invoice = read_invoice(tx, id, policy).await?;
    let payer = invoice["recipient"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pr = validate_resource(
        reconciliation(id.as_str(), &payer, payment, created),
        Expect::Create(pr_ty),
    )?;
    let if_none_exist = payment.identifier.as_ref().map(identifier_query);
    // A retry of a payment already recorded matches it and changes nothing.
    rest::create(tx, pr, None, if_none_exist.as_deref(), policy).await?;
    read_invoice(tx, id, policy).await
}

/// The current Invoice `id` as `policy` sees it (404 otherwise).
async fn read_invoice(
    tx: &mut StoreTx,
    id: &ResourceId,
    policy: &Policy,
) -> Result<Value, ApiError> {
    let ty = ResourceType::parse("Invoice")
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("Invoice")))?;
    let content = rest::current_for(&mut Lookup::Tx(tx), policy, ty, id)
        .await?
        .and_then(|v| v.content)
        .ok_or_else(|| ApiError::NotFound(format!("Invoice/{id} is not known")))?;
    serde_json::from_str(&content).map_err(ApiError::internal)
}

/// Applies a PaymentReconciliation just created in `tx` to the invoices it pays: each one's
/// amount paid and status, in the same transaction; 422 at the detail when one cannot take it
/// (so nothing of the payment is stored).
pub async fn apply_recorded(tx: &mut StoreTx, pr: &Value, policy: &Policy) -> Result<(), ApiError> {
    let details = invoice_details(pr)
        .map_err(|p| ApiError::Unprocessable(p.into_iter().map(Invalid::issue).collect()))?;
    if details.is_empty() {
        return Ok(());
    }
    policy.check("Invoice", Perm::Update)?;
    let ty = ResourceType::parse("Invoice")
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("Invoice")))?;
    for (invoice_id, amount) in details {
        let refused = |m: String| {
            ApiError::Unprocessable(vec![
                Issue::error("business-rule", m).at("PaymentReconciliation.detail"),
            ])
        };
        let id = ResourceId::parse(&invoice_id)
            .ok_or_else(|| refused(format!("Invoice/{invoice_id} is not known")))?;
        // Payments of one invoice take turns: each adds to what the one before left.
        tx.lock_key(&format!("invoice-payment/{id}")).await?;
        let (version, invoice) = match rest::current_for(&mut Lookup::Tx(tx), policy, ty, &id).await
        {
            Ok(Some(v)) => match v.content {
                Some(c) => (
                    v.version_id,
                    serde_json::from_str::<Value>(&c).map_err(ApiError::internal)?,
                ),
                None => return Err(refused(format!("Invoice/{id} is not known"))),
            },
            Ok(None) | Err(ApiError::NotFound(_)) => {
                return Err(refused(format!("Invoice/{id} is not known")));
            }
            Err(e) => return Err(e),
        };
        let after = apply(&invoice, &amount).map_err(|m| refused(format!("Invoice/{id}: {m}")))?;
        let res = validate_resource(after, Expect::Update(ty, &id))?;
        rest::update(tx, res, &id, Some(version), policy).await?;
    }
    Ok(())
}

/// Recorded payments are a ledger (422 for a change or delete of one that pays an invoice): a
/// correction or refund is a new PaymentReconciliation.
pub fn unchangeable() -> ApiError {
    ApiError::Unprocessable(vec![
        Issue::error(
            "business-rule",
            "a recorded payment of an invoice is not changed or deleted; record the correction \
             or refund as a new PaymentReconciliation (a negative amount refunds)",
        )
        .at("PaymentReconciliation.detail"),
    ])
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
    fn refunds_reopen_a_balanced_invoice_and_never_exceed_what_was_paid() {
        let balanced = apply(&invoice("10.00", None), &usd("10")).unwrap();
        let refund = Money {
            minor: -250,
            currency: "USD".into(),
        };
        let after = apply(&balanced, &refund).unwrap();
        assert_eq!(after["status"], "issued");
        assert_eq!(paid(&after), 750);
        let too_much = Money {
            minor: -1_000,
            currency: "USD".into(),
        };
        let e = apply(&after, &too_much).unwrap_err();
        assert!(e.contains("10.00 is more than the 7.50 paid"), "{e}");
    }

    #[test]
    fn a_reconciliation_pays_the_invoices_its_details_name() {
        let pr = json!({"resourceType": "PaymentReconciliation", "status": "active", "detail": [
            {"request": {"reference": "Invoice/a"}, "amount": {"value": 5.5, "currency": "USD"}},
            {"request": {"reference": "Claim/c"}, "amount": {"value": 1, "currency": "USD"}},
            {"request": {"reference": "Invoice/b"},
             "amount": serde_json::from_str::<Value>(r#"{"value": -2.25, "currency": "USD"}"#).unwrap()}
        ]});
        let d = invoice_details(&pr).unwrap();
        assert_eq!(
            d,
            vec![
                ("a".to_owned(), usd("5.50")),
                (
                    "b".to_owned(),
                    Money {
                        minor: -225,
                        currency: "USD".into()
                    }
                )
            ]
        );
        assert!(pays_invoices(&pr));
        let mut cancelled = pr.clone();
        cancelled["status"] = json!("cancelled");
        assert!(invoice_details(&cancelled).unwrap().is_empty());
        let mut no_amount = pr.clone();
        no_amount["detail"][0]["amount"] = Value::Null;
        let e = invoice_details(&no_amount).unwrap_err();
        assert_eq!(e[0].expression, "PaymentReconciliation.detail.amount");
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

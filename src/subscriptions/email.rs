//! The `email` channel: a `mailto:` endpoint gets a short notice through an SMTP relay
//! (lettre). The notice names the subscription, the event number and the changed resource's
//! type, id and version, which carry no patient data; a subscription with a `payload` gets the
//! version attached in that format (https://hl7.org/fhir/R4/subscription.html#2.46.7.2).

use std::path::PathBuf;

use anyhow::Context;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::model::{Format, Subscription};
use crate::store::notify::Notification;

/// The SMTP relay (`VB_SMTP_URL`, `VB_SMTP_FROM`, `VB_SMTP_CA_FILE`).
#[derive(Clone)]
pub struct SmtpConfig {
    /// `smtp://user:password@host:587?tls=required` (STARTTLS), `smtps://…:465` (TLS from the
    /// start), or `smtp://host:25` for a trusted local relay without TLS.
    pub url: String,
    /// The sender address.
    pub from: String,
    /// PEM certificates of a private CA that issued the relay's certificate.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &crate::config::redact_url(&self.url))
            .field("from", &self.from)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Sends notices through the configured relay.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(c: &SmtpConfig) -> anyhow::Result<Mailer> {
        let from: Mailbox = c
            .from
            .parse()
            .with_context(|| format!("the sender address {} is not valid", c.from))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&c.url).context(
            "the SMTP URL is not valid (smtp://user:password@host:port?tls=required or smtps://…)",
        )?;
        if let Some(path) = &c.ca_file {
            let url = url::Url::parse(&c.url)?;
            let host = url.host_str().unwrap_or_default().to_owned();
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the SMTP CA file {}", path.display()))?;
            let params = TlsParameters::builder(host)
                .add_root_certificate(Certificate::from_pem(&pem)?)
                .build()?;
            let tls = url
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned());
            builder = builder.tls(match (url.scheme(), tls.as_deref()) {
                ("smtps", _) => Tls::Wrapper(params),
                (_, Some("required")) => Tls::Required(params),
                (_, Some("opportunistic")) => Tls::Opportunistic(params),
                _ => Tls::None,
            });
        }
        Ok(Mailer {
            transport: builder
                .timeout(Some(std::time::Duration::from_secs(30)))
                .build(),
            from,
        })
    }

    /// Sends the notice of `n` to `to`; the reason when the relay did not take it.
    pub async fn send(
        &self,
        sub: &Subscription,
        to: &str,
        n: &Notification,
        payload: Option<(Format, Vec<u8>)>,
    ) -> Result<(), String> {
        let message = notice(&self.from, sub, to, n, payload)?;
        self.deliver(message).await
    }

    /// The sender address.
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// Sends `message`; the reason when the relay did not take it (no address or content in
    /// it: it goes into logs and `Subscription.error`).
    pub async fn deliver(&self, message: Message) -> Result<(), String> {
        self.transport.send(message).await.map(|_| ()).map_err(|e| {
            if e.is_permanent() {
                "the mail relay refused the message".to_owned()
            } else if e.is_transient() {
                "the mail relay is busy".to_owned()
            } else {
                "cannot reach the mail relay".to_owned()
            }
        })
    }
}

/// The message: a subject and text that say what changed without saying anything about it.
pub fn notice(
    from: &Mailbox,
    sub: &Subscription,
    to: &str,
    n: &Notification,
    payload: Option<(Format, Vec<u8>)>,
) -> Result<Message, String> {
    let to: Mailbox = to.parse().map_err(|_| "the address is not valid")?;
    let what = match n.method.as_str() {
        "POST" => "created",
        "DELETE" => "deleted",
        _ => "updated",
    };
    let subject = format!(
        "[vitalbridge] {} {what} (subscription {}, event {})",
        n.res_type, sub.id, n.event_number
    );
    // Short lines: the text goes as plain 7-bit, readable as it is in any mail client.
    let text = format!(
        "A change matched one of your FHIR subscriptions.\n\n\
         Subscription: Subscription/{sub}\n\
         Event: {event}\n\
         Resource: {ty}/{id}\n\
         Change: {what}, version {version}\n\
         At: {at}\n\n\
         Read it with an authorized client at\n\
         {ty}/{id}/_history/{version}\n",
        sub = sub.id,
        event = n.event_number,
        ty = n.res_type,
        id = n.res_id,
        version = n.version_id,
        at = crate::store::format_instant(n.created_at),
    );
    let header = |name: &'static str, value: String| {
        HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
    };
    let mut builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject);
    builder = builder.raw_header(header(super::deliver::SUBSCRIPTION_HEADER, sub.id.clone()));
    builder = builder.raw_header(header(
        super::deliver::EVENT_HEADER,
        n.event_number.to_string(),
    ));
    let body = SinglePart::plain(text);
    let message = match payload {
        None => builder.singlepart(body),
        Some((format, bytes)) => {
            let ext = match format {
                Format::Json => "json",
                Format::Xml => "xml",
            };
            let kind = ContentType::parse(format.mime()).map_err(|e| e.to_string())?;
            let file = format!("{}-{}-{}.{ext}", n.res_type, n.res_id, n.version_id);
            builder.multipart(
                MultiPart::mixed()
                    .singlepart(body)
                    .singlepart(Attachment::new(file).body(bytes, kind)),
            )
        }
    };
    message.map_err(|e| format!("cannot build the message: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sub(payload: Option<&str>) -> Subscription {
        let mut channel = json!({"type": "email", "endpoint": "mailto:nurse@clinic.example"});
        if let Some(p) = payload {
            channel["payload"] = json!(p);
        }
        super::super::model::read(
            &json!({"resourceType": "Subscription", "id": "s9", "status": "active",
                    "reason": "r", "criteria": "Observation?code=1", "channel": channel}),
            "http://localhost/fhir",
        )
        .unwrap()
    }

    fn notification() -> Notification {
        Notification {
            id: 1,
            subscription_id: "s9".into(),
            event_number: 4,
            res_type: "Observation".into(),
            res_id: "o1".into(),
            version_id: 2,
            method: "PUT".into(),
            created_at: 1_796_000_000_000_000,
            due_at: 0,
            attempts: 1,
            last_error: None,
            failing_since: None,
        }
    }

    #[test]
    fn a_notice_says_what_changed_and_nothing_about_it() {
        let from: Mailbox = "vitalbridge@example.org".parse().unwrap();
        let m = notice(
            &from,
            &sub(None),
            "nurse@clinic.example",
            &notification(),
            None,
        )
        .unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(
            text.contains("Subject: [vitalbridge] Observation updated (subscription s9, event 4)"),
            "{text}"
        );
        assert!(text.contains("X-Vitalbridge-Event-Number: 4"), "{text}");
        assert!(
            text.contains("Resource: Observation/o1\r\nChange: updated, version 2"),
            "{text}"
        );
        assert!(text.contains("Content-Transfer-Encoding: 7bit"), "{text}");
        assert!(!text.contains("Content-Disposition: attachment"), "{text}");
    }

    #[test]
    fn a_payload_is_attached_in_its_format() {
        let from: Mailbox = "vitalbridge@example.org".parse().unwrap();
        let body = br#"{"resourceType":"Observation","id":"o1"}"#.to_vec();
        let m = notice(
            &from,
            &sub(Some("application/fhir+json")),
            "nurse@clinic.example",
            &notification(),
            Some((Format::Json, body)),
        )
        .unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(
            text.contains("Content-Type: application/fhir+json"),
            "{text}"
        );
        assert!(
            text.contains("filename=\"Observation-o1-2.json\""),
            "{text}"
        );
    }
}

"""A real SMTP server for the subscription email tests (PyPI aiosmtpd).

    python server.py --port N --maildir DIR [--user U --password P] [--tls-cert C --tls-key K
                     [--implicit-tls]]

Each message it accepts is written to DIR as `{n}.eml` (the message as received) and
`{n}.json` (the envelope: sender, recipients, the authenticated user; and the subject and the
decoded text parts, each with its content type). With --tls-cert it offers
STARTTLS and requires it before AUTH and MAIL, or with --implicit-tls speaks TLS from the first
byte (SMTPS, port 465 style); with --user it requires AUTH (PLAIN or LOGIN).
It prints "ready" once it listens.
"""

import argparse
import email
import email.policy
import json
import os
import ssl
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, maildir):
        self.maildir = maildir
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.maildir, str(n))
        raw = envelope.original_content or envelope.content
        with open(base + ".eml.tmp", "wb") as f:
            f.write(raw)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        meta = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "user": getattr(session, "auth_data", None) and session.auth_data.login.decode(),
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "subject": str(msg["subject"]),
            "parts": [
                {"type": part.get_content_type(), "text": part.get_content()}
                for part in msg.walk()
                if part.get_content_maintype() == "text"
            ],
        }
        with open(base + ".json", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--maildir", required=True)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--implicit-tls", action="store_true")
    a = p.parse_args()
    os.makedirs(a.maildir, exist_ok=True)

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == a.user
            and auth_data.password.decode() == a.password
        )
        return AuthResult(success=ok, auth_data=auth_data if ok else None)

    kwargs = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.implicit_tls:
            kwargs.update(ssl_context=ctx)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)
    if a.user:
        kwargs.update(
            authenticator=authenticate,
            auth_required=True,
            # aiosmtpd counts only STARTTLS as TLS; an implicit TLS connection is one throughout.
            auth_require_tls=bool(a.tls_cert) and not a.implicit_tls,
        )
    controller = Controller(
        Store(a.maildir), hostname="127.0.0.1", port=a.port, server_hostname="localhost", **kwargs
    )
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()

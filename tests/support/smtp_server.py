"""A real SMTP server for churnwatch's tests (aiosmtpd on loopback), scriptable to fail.

Every message it accepts is parsed with Python's own `email` package (an independent
MIME parser) and written as one JSON line to OUT/received.jsonl: envelope, decoded
headers, both parts and their content types. Every attempt (accepted or refused) is a
line in OUT/attempts.jsonl. When it listens, it prints "PORT <n>" on stdout.

  smtp_server.py --out DIR [--port N] [--transient N] [--reject SUBSTR]
                 [--auth USER:PASSWORD] [--tls-cert PEM --tls-key PEM]

--transient N   answer the first N DATA attempts of each Message-ID with 451
--reject SUBSTR answer RCPT TO of addresses containing SUBSTR with 550
--auth          require AUTH (PLAIN/LOGIN) with these credentials
--tls-cert/key  offer STARTTLS and require it (--implicit-tls: TLS from the first
                byte instead, as on port 465)
"""

import argparse
import json
import os
import signal
import ssl
import sys
import threading
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def parse(content: bytes) -> dict:
    msg = message_from_bytes(content, policy=policy.default)
    parts = {}
    for part in msg.walk():
        if part.is_multipart():
            continue
        parts[part.get_content_type()] = {
            "charset": part.get_content_charset(),
            "transfer_encoding": part.get("Content-Transfer-Encoding"),
            "body": part.get_content(),
        }
    return {
        "content_type": msg.get_content_type(),
        "headers": [[k, str(v)] for k, v in msg.items()],
        "subject": str(msg.get("Subject", "")),
        "to": str(msg.get("To", "")),
        "message_id": str(msg.get("Message-ID", "")),
        "parts": parts,
    }


class Handler:
    def __init__(self, out: str, transient: int, reject: str):
        self.out = out
        self.transient = transient
        self.reject = reject
        self.seen = {}
        self.lock = threading.Lock()

    def log(self, name: str, record: dict):
        with self.lock:
            with open(os.path.join(self.out, name), "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject and self.reject in address:
            self.log("attempts.jsonl", {"rcpt": address, "code": 550})
            return "550 5.1.1 <%s>: recipient address rejected" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        mid = str(message_from_bytes(content, policy=policy.default).get("Message-ID", ""))
        with self.lock:
            n = self.seen.get(mid, 0)
            self.seen[mid] = n + 1
        if n < self.transient:
            self.log("attempts.jsonl", {"message_id": mid, "code": 451})
            return "451 4.3.0 try again later"
        self.log("attempts.jsonl", {"message_id": mid, "code": 250})
        record = parse(content)
        record["mail_from"] = envelope.mail_from
        record["rcpt_tos"] = envelope.rcpt_tos
        # The client's address and port: one per connection.
        record["peer"] = "%s:%s" % tuple(session.peer[:2])
        record["raw"] = content.decode("utf-8", errors="replace")
        self.log("received.jsonl", record)
        return "250 2.0.0 Ok: queued"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transient", type=int, default=0)
    ap.add_argument("--reject", default="")
    ap.add_argument("--auth", default="")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--implicit-tls", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    port = a.port
    if port == 0:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    kwargs = {}
    if a.auth:
        user, password = a.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            # handled=False: aiosmtpd answers 535 itself on failure.
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticator, auth_required=True)
        kwargs["auth_require_tls"] = bool(a.tls_cert)
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.implicit_tls:
            kwargs.update(ssl_context=ctx)
        else:
            kwargs.update(tls_context=ctx, require_starttls=True)
    controller = Controller(
        Handler(a.out, a.transient, a.reject),
        hostname="127.0.0.1",
        port=port,
        **kwargs,
    )
    controller.start()
    print("PORT %d" % port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    sys.exit(main())

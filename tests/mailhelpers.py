"""Test helpers for mail: a real SMTP server (aiosmtpd) on a loopback port, and running due job retries."""

from __future__ import annotations

import datetime
import email
import email.policy
import socket

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from kamengsite import jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpServer:
    """A real SMTP server on 127.0.0.1 that keeps what it receives; can be started late and stopped."""

    def __init__(self, port=None, credentials=None, tls=None):
        self.port = port or free_port()
        self.credentials = credentials
        self.tls = tls  # None, ("starttls", ssl context) or ("ssl", ssl context)
        self.messages = []  # (mail from, recipients, parsed message)
        self.logins = []
        self._controller = None

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == self.credentials)

    def start(self):
        kwargs = {}
        if self.credentials:
            kwargs = {"authenticator": self._authenticate, "auth_required": True, "auth_require_tls": False}
        if self.tls and self.tls[0] == "starttls":
            kwargs.update(tls_context=self.tls[1], require_starttls=True)
        elif self.tls:
            kwargs.update(ssl_context=self.tls[1])
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10, **kwargs)
        self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def url(self):
        scheme = {None: "smtp", "starttls": "smtp+starttls", "ssl": "smtps"}[self.tls and self.tls[0]]
        return f"{scheme}://127.0.0.1:{self.port}"


def self_signed_tls(folder):
    """(server ssl context, CA file) for a certificate of 127.0.0.1 and localhost, made here."""
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


def retry_due(instance, after=datetime.timedelta(seconds=jobs.MAIL_RETRY_DELAY + 1)):
    """Run the retries that are due ``after`` from now, as the consumer's scheduler would; how many ran."""
    huey = jobs.jobs_for(instance).huey
    at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + after
    due = huey.read_schedule(at)
    for task in due:
        huey.execute(task, timestamp=at)
    return len(due)

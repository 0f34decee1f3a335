"""Outgoing HTTP requests to addresses someone else typed: callbacks to resellers, upstream suppliers.

The SSRF guard: the host name is resolved once, every address it resolves to must be public
(not private, loopback, link-local, multicast or reserved — IPv4-mapped IPv6 included), and
the connection goes to that checked address (pinned), so a DNS answer that changes between
the check and the connect (rebinding) reaches nothing new. Redirects are not followed.
``allow_loopback`` lets tests and a non-production instance reach 127.0.0.1 (fake servers);
private and link-local addresses stay refused even then.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import KamengsiteError

DEFAULT_TIMEOUT = 10.0
MAX_BYTES = 2 * 1024 * 1024
USER_AGENT = "kamengsite/1"


class OutboundError(KamengsiteError):
    """The request was refused before sending (``refused``) or failed on the way; the message says which."""

    code = "outbound_error"

    def __init__(self, message: str, *, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_public(address: str) -> bool:
    ip = _ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


def is_loopback(address: str) -> bool:
    ip = _ip(address)
    return ip is not None and ip.is_loopback


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _ip(address: str):
    """The address to judge: an IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def check_url(url: str, *, allow_loopback: bool = False, resolver=None) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, path with query, the checked address) of an http(s) URL; OutboundError if refused."""
    if not isinstance(url, str) or len(url) > 2000:
        raise OutboundError("the URL must be at most 2000 characters", refused=True)
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundError("the URL must start with http:// or https:// and name a host", refused=True)
    if parts.username or parts.password:
        raise OutboundError("the URL must not carry a user name or password", refused=True)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and ":" in parts.netloc.rsplit("]", 1)[-1]):
        raise OutboundError("the URL's port is not a number from 1 to 65535", refused=True)
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    try:
        addresses = (resolver or resolve)(host)
    except (OSError, UnicodeError):
        raise OutboundError(f"cannot resolve {host}") from None
    if not addresses:
        raise OutboundError(f"cannot resolve {host}")
    for address in addresses:
        if not (is_public(address) or (allow_loopback and is_loopback(address))):
            raise OutboundError(f"{host} points to a private, loopback or reserved address ({address}): refused",
                                refused=True)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path, addresses[0]


def request(method: str, url: str, *, body: bytes = b"", headers: dict | None = None,
            timeout: float = DEFAULT_TIMEOUT, max_bytes: int = MAX_BYTES, allow_loopback: bool = False,
            resolver=None) -> Response:
    """Send one request through the guard; the answer whatever its status (OutboundError when none came)."""
    scheme, host, port, path, address = check_url(url, allow_loopback=allow_loopback, resolver=resolver)
    deadline = time.monotonic() + timeout
    connection_class = PinnedHTTPS if scheme == "https" else PinnedHTTP
    connection = connection_class(host, address, port, timeout=timeout)
    sent = {"User-Agent": USER_AGENT, "Connection": "close", **(headers or {})}
    try:
        connection.request(method.upper(), path, body=body or None, headers=sent)
        response = connection.getresponse()
        return Response(response.status, read_limited(response, deadline, max_bytes),
                        {k.lower(): v for k, v in response.getheaders()})
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        if isinstance(exc, (socket.timeout, TimeoutError)):
            raise OutboundError(f"{host} did not answer within {timeout:g} s") from None
        raise OutboundError(f"cannot reach {host}: {type(exc).__name__}") from None
    finally:
        connection.close()


def read_limited(response, deadline: float, max_bytes: int) -> bytes:
    body = b""
    while True:
        if time.monotonic() > deadline:
            raise OutboundError("the answer took too long")
        chunk = response.read1(65536)  # one network read at most: the deadline is checked between reads
        if not chunk:
            return body
        body += chunk
        if len(body) > max_bytes:
            raise OutboundError(f"the answer is too large (over {max_bytes} bytes)")


class PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a fixed address, whatever the host name resolves to by now."""

    def __init__(self, host, address, port, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host, address, port, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)

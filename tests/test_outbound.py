"""The SSRF guard of outgoing requests (kamengsite/outbound.py): what is refused, what is pinned, limits."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kamengsite import outbound
from kamengsite.outbound import OutboundError, check_url

PRIVATE_OR_RESERVED = [
    "10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.254", "192.168.1.1",  # private
    "127.0.0.1", "127.255.255.254",  # loopback
    "169.254.169.254", "169.254.0.1",  # link-local (cloud metadata)
    "0.0.0.0", "0.1.2.3",  # "this network"
    "100.64.0.1",  # carrier-grade NAT
    "192.0.0.1", "192.0.2.1", "198.51.100.1", "203.0.113.1",  # IETF protocol assignments, documentation
    "198.18.0.1",  # benchmarking
    "224.0.0.1", "239.255.255.250", "233.252.0.1",  # multicast
    "240.0.0.1", "255.255.255.255",  # reserved, broadcast
    "::1", "::",  # loopback, unspecified
    "fe80::1", "fc00::1", "fd12:3456::1",  # link-local, unique local
    "ff02::1", "ff05::2",  # multicast
    "2001:db8::1", "100::1", "2001:2::1",  # documentation, discard, benchmarking
    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:192.168.0.1",  # IPv4-mapped
    "64:ff9b::a00:1", "64:ff9b::7f00:1", "2002:a00:1::1", "2002:7f00:1::1",  # NAT64 and 6to4 carrying private IPv4
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:93.184.216.34", "64:ff9b::808:808"]


def fixed(*addresses):
    """A resolver that answers ``addresses`` for every name."""
    return lambda host: list(addresses)


def refused(url, **kwargs) -> OutboundError:
    with pytest.raises(OutboundError) as caught:
        check_url(url, **kwargs)
    assert caught.value.refused, str(caught.value)
    return caught.value


@pytest.mark.parametrize("address", PRIVATE_OR_RESERVED)
def test_every_non_public_address_is_refused(address):
    assert not outbound.is_public(address)
    refused("https://shop.example.com/callback", resolver=fixed(address))
    literal = f"[{address}]" if ":" in address else address
    refused(f"http://{literal}/callback")  # the address written in the URL, resolved by the system


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_and_are_pinned(address):
    scheme, host, port, path, pinned = check_url("https://shop.example.com:8443/cb?a=1&b=2",
                                                 resolver=fixed(address))
    assert (scheme, host, port, path, pinned) == ("https", "shop.example.com", 8443, "/cb?a=1&b=2", address)
    assert check_url("http://shop.example.com", resolver=fixed(address))[2:4] == (80, "/")


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f000001/", "http://127.1/", "http://017700000001/",
                                 "http://localhost/", "http://LOCALHOST:8080/x"])
def test_other_spellings_of_loopback_are_refused(url):
    refused(url)


def test_a_name_with_one_private_address_among_public_ones_is_refused():
    error = refused("https://mixed.example.com/", resolver=fixed("93.184.216.34", "10.0.0.7", "8.8.8.8"))
    assert "10.0.0.7" in str(error)
    refused("https://mixed.example.com/", resolver=fixed("2606:4700:4700::1111", "fd00::1"))


def test_allow_loopback_lets_loopback_through_and_nothing_else():
    for address in ("127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"):
        assert check_url("http://fake.test/", allow_loopback=True, resolver=fixed(address))[4] == address
        refused("http://fake.test/", resolver=fixed(address))
    for address in ("10.0.0.1", "169.254.169.254", "fe80::1", "192.168.0.1", "::ffff:169.254.169.254", "0.0.0.0"):
        refused("http://fake.test/", allow_loopback=True, resolver=fixed(address))
    refused("http://fake.test/", allow_loopback=True, resolver=fixed("127.0.0.1", "10.0.0.1"))


@pytest.mark.parametrize("url", ["http://user@shop.example.com/", "https://user:secret@shop.example.com/",
                                 "https://:secret@shop.example.com/", "http://shop.example.com@127.0.0.1/"])
def test_userinfo_in_the_url_is_refused(url):
    refused(url, resolver=fixed("93.184.216.34"))


@pytest.mark.parametrize("url", ["ftp://shop.example.com/", "file:///etc/passwd", "gopher://shop.example.com/",
                                 "javascript:alert(1)", "//shop.example.com/", "shop.example.com/cb", "http:///cb",
                                 "", "https://", None, 42, "https://shop.example.com/" + "a" * 2000])
def test_other_schemes_and_malformed_urls_are_refused(url):
    refused(url, resolver=fixed("93.184.216.34"))


@pytest.mark.parametrize("port", ["65536", "99999", "abc", "-1", "8o", "0", ""])
def test_ports_outside_the_range_are_refused(port):
    refused(f"http://shop.example.com:{port}/", resolver=fixed("93.184.216.34"))


def test_a_name_that_does_not_resolve_is_an_error_but_not_a_refusal():
    def broken(host):
        raise socket.gaierror("no such name")

    for resolver in (broken, fixed()):
        with pytest.raises(OutboundError) as caught:
            check_url("https://nowhere.example.com/", resolver=resolver)
        assert not caught.value.refused


def test_the_checked_address_is_the_one_connected_to(monkeypatch):
    """DNS rebinding: the name answers a public address to the check, then a private one; the
    connection goes to the checked address and the name is never looked up again."""
    answers = [["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]]
    asked, connected = [], []

    def rebinding(host):
        asked.append(host)
        return answers[len(asked) - 1]

    def no_lookup(*args, **kwargs):
        raise AssertionError(f"the name was resolved again: {args}")

    def create_connection(address, timeout=None, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError("test: no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(OutboundError) as caught:
        outbound.request("POST", "http://rebind.example.com:8080/cb", body=b"{}", resolver=rebinding, timeout=1)
    assert not caught.value.refused
    assert asked == ["rebind.example.com"] and connected == [("93.184.216.34", 8080)]


# -- against a local server ---------------------------------------------------------------------


class Server:
    def __init__(self):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                server.requests.append((self.command, self.path, dict(self.headers.items()), b""))
                getattr(server, "answer_" + self.path.strip("/").split("?")[0])(self)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.requests.append((self.command, self.path, dict(self.headers.items()), body))
                server.answer_ok(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.httpd.server_address[1]

    @staticmethod
    def _send(handler, status, body, headers=()):
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def answer_ok(self, handler):
        self._send(handler, 201, b'{"ok": true}', [("X-Thing", "yes")])

    def answer_big(self, handler):
        self._send(handler, 200, b"x" * 5000)

    def answer_slow(self, handler):
        time.sleep(1.5)
        self._send(handler, 200, b"late")

    def answer_trickle(self, handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "40")
        handler.end_headers()
        for _ in range(8):  # each read is quick, the whole answer is not
            handler.wfile.write(b"xxxxx")
            handler.wfile.flush()
            time.sleep(0.25)

    def answer_redirect(self, handler):
        self._send(handler, 302, b"", [("Location", "http://169.254.169.254/latest/meta-data")])

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_a_request_reaches_a_loopback_server_only_when_allowed(server):
    url = f"http://127.0.0.1:{server.port}/cb?x=1"
    with pytest.raises(OutboundError) as caught:
        outbound.request("POST", url, body=b'{"a": 1}')
    assert caught.value.refused and server.requests == []
    answer = outbound.request("POST", url, body=b'{"a": 1}', headers={"Content-Type": "application/json"},
                              allow_loopback=True, timeout=5)
    assert (answer.status, answer.body, answer.headers["x-thing"]) == (201, b'{"ok": true}', "yes")
    (method, path, headers, body), = server.requests
    assert (method, path, body) == ("POST", "/cb?x=1", b'{"a": 1}')
    assert headers["User-Agent"] == outbound.USER_AGENT and headers["Content-Type"] == "application/json"


def test_the_host_header_names_the_host_while_the_connection_goes_to_the_pinned_address(server):
    answer = outbound.request("GET", f"http://reseller.test:{server.port}/ok", allow_loopback=True, timeout=5,
                              resolver=fixed("127.0.0.1"))
    assert answer.status == 201
    assert server.requests[0][2]["Host"] == f"reseller.test:{server.port}"


def test_redirects_are_not_followed(server):
    answer = outbound.request("GET", f"http://127.0.0.1:{server.port}/redirect", allow_loopback=True, timeout=5)
    assert answer.status == 302 and len(server.requests) == 1


def test_a_server_that_does_not_answer_in_time_is_a_timeout(server):
    started = time.monotonic()
    with pytest.raises(OutboundError, match="did not answer within"):
        outbound.request("GET", f"http://127.0.0.1:{server.port}/slow", allow_loopback=True, timeout=0.5)
    assert time.monotonic() - started < 1.4


def test_an_answer_that_trickles_in_past_the_deadline_is_cut(server):
    started = time.monotonic()
    with pytest.raises(OutboundError, match="took too long"):
        outbound.request("GET", f"http://127.0.0.1:{server.port}/trickle", allow_loopback=True, timeout=0.8)
    assert time.monotonic() - started < 1.6


def test_an_answer_over_the_size_limit_is_refused(server):
    url = f"http://127.0.0.1:{server.port}/big"
    with pytest.raises(OutboundError, match="too large"):
        outbound.request("GET", url, allow_loopback=True, timeout=5, max_bytes=4999)
    assert outbound.request("GET", url, allow_loopback=True, timeout=5, max_bytes=5000).body == b"x" * 5000


def test_a_closed_port_is_an_error_not_a_refusal():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the socket is closed
    with pytest.raises(OutboundError, match="cannot reach") as caught:
        outbound.request("GET", f"http://127.0.0.1:{port}/", allow_loopback=True, timeout=2)
    assert not caught.value.refused

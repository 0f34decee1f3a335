"""What every upstream connector is: the data it returns, its error, and the base class.

A connector speaks one upstream protocol for one docked upstream (its ``settings``). All HTTP goes
through ``kamengsite.outbound.request`` (the SSRF guard) with a timeout; ``allow_loopback`` is
passed through (tests and non-production instances only). Money in an upstream's answers is yuan
text ("12.50") turned into integer fen exactly with ``Decimal`` (``yuan_to_fen``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from kamengsite import outbound
from kamengsite.errors import KamengsiteError

DEFAULT_TIMEOUT = 15.0
#: What "unlimited stock" (an upstream's -1) becomes locally: a plain counter has no infinity.
UNLIMITED_STOCK = 9999


class UpstreamError(KamengsiteError):
    """An upstream call failed. ``retryable``: transport error, timeout, 5xx (try again later);
    not retryable: the upstream's definite "no" (bad signature, out of stock, no balance...)."""

    def __init__(self, message: str, *, retryable: bool = False, already_placed: bool = False):
        super().__init__(message)
        self.retryable = retryable
        #: The upstream refused because it already has an order under this idempotency key (an
        #: earlier attempt went through and its answer was lost): never a reason to refund.
        self.already_placed = already_placed


@dataclass
class UpstreamProduct:
    ref: str
    name: str
    price_fen: int
    stock: int
    kind: str = "card"  # card | topup | manual
    category: str = ""
    fields: list = field(default_factory=list)  # [{"name", "label", "required"}] a 代充 buyer fills in


@dataclass
class UpstreamOrder:
    state: str  # delivered | pending | failed
    keys: list = field(default_factory=list)
    upstream_order_no: str = ""
    message: str = ""


def yuan_to_fen(value) -> int:
    """"12.50" (or 12.5, or 12) yuan → 1250 fen, exactly; UpstreamError for anything else.

    Refuses more than 2 decimals, negatives, NaN/infinity, booleans and non-numbers: a price we
    cannot read exactly is not a price we sell at."""
    if isinstance(value, bool) or value is None:
        raise UpstreamError(f"not a price: {value!r}")
    text = str(value).strip() if not isinstance(value, float) else repr(value)
    try:
        amount = Decimal(text)
    except (InvalidOperation, ValueError):
        raise UpstreamError(f"not a price: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise UpstreamError(f"not a price: {value!r}")
    if amount.as_tuple().exponent < -2 and amount != amount.quantize(Decimal("0.01")):
        raise UpstreamError(f"price with more than 2 decimals: {value!r}")
    return int(amount * 100)


def whole_number(value, what: str = "number") -> int:
    if isinstance(value, bool):
        raise UpstreamError(f"not a whole {what}: {value!r}")
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise UpstreamError(f"not a whole {what}: {value!r}") from None
    return number


def stock_count(value) -> int:
    """An upstream stock figure: -1 (unlimited) becomes ``UNLIMITED_STOCK``, other negatives 0."""
    number = whole_number(value, "stock")
    if number == -1:
        return UNLIMITED_STOCK
    return max(0, number)


class Connector:
    """One upstream protocol. Subclasses set ``protocol``, ``label``, ``settings_schema``, ``idempotent``."""

    protocol = ""
    label = ""
    settings_schema: dict = {"type": "object", "properties": {}}
    idempotent = False  # True: place_order with the same idempotency key returns the same upstream order
    timeout = DEFAULT_TIMEOUT

    def __init__(self, settings: dict, *, allow_loopback: bool = False):
        self.settings = dict(settings or {})
        self.allow_loopback = allow_loopback
        missing = [key for key in self.settings_schema.get("required", ()) if not str(self.settings.get(key) or "")]
        if missing:
            raise UpstreamError(f"missing settings: {', '.join(missing)}")
        self.base_url = str(self.settings.get("base_url", "")).strip().rstrip("/")

    # -- the interface ------------------------------------------------------------------------

    def products(self) -> list[UpstreamProduct]:
        raise NotImplementedError

    def stock(self, refs: list[str]) -> dict[str, UpstreamProduct]:
        """The current price and stock of ``refs`` (refs the upstream no longer has are left out)."""
        wanted = set(refs)
        return {p.ref: p for p in self.products() if p.ref in wanted}

    def place_order(self, ref: str, quantity: int, idempotency_key: str, fields: dict | None = None) -> UpstreamOrder:
        raise NotImplementedError

    def query_order(self, idempotency_key: str, upstream_order_no: str = "") -> UpstreamOrder | None:
        raise NotImplementedError

    # -- HTTP ---------------------------------------------------------------------------------

    def http(self, method: str, url: str, *, body: bytes = b"", headers: dict | None = None) -> outbound.Response:
        """One request through the SSRF guard; transport failures become retryable UpstreamErrors."""
        try:
            return outbound.request(method, url, body=body, headers=headers, timeout=self.timeout,
                                    allow_loopback=self.allow_loopback)
        except outbound.OutboundError as exc:
            raise UpstreamError(str(exc), retryable=not exc.refused) from None

    @staticmethod
    def json_of(response: outbound.Response):
        """The JSON body; a 5xx or an unreadable answer is a retryable error."""
        if response.status >= 500:
            raise UpstreamError(f"the upstream answered HTTP {response.status}", retryable=True)
        try:
            return json.loads(response.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UpstreamError(f"the upstream's answer is not JSON (HTTP {response.status})",
                                retryable=response.status >= 500) from None


def builtin_connectors() -> list[type[Connector]]:
    from .acgfaka import AcgFakaConnector
    from .dujiao import DujiaoConnector
    from .kamengsite import KamengsiteConnector

    return [KamengsiteConnector, AcgFakaConnector, DujiaoConnector]


__all__ = ["Connector", "UpstreamError", "UpstreamOrder", "UpstreamProduct", "yuan_to_fen", "stock_count",
           "builtin_connectors", "UNLIMITED_STOCK"]

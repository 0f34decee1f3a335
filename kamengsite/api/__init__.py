"""The reseller API (``/api/v1``): another shop or a developer sells this site's goods from its own system.

* ``models``: app keys, remembered nonces, the callers' orders, callback deliveries.
* ``signing``: the HMAC-SHA256 request signature (both sides: the server checks, clients and
  the kamengsite upstream connector sign).
* ``keys``: issuing, finding and revoking app keys; a key's secret is derived, never stored.
* ``auth``: checking a request's signature, time window and nonce.
* ``routes``: the endpoints; ``openapi``: their OpenAPI 3 document and the docs page.
* ``callbacks``: signed status callbacks to the reseller, retried, with a delivery log.

See docs/api.md.
"""

"""Every hook a plugin can implement, with its exact signature.

Hook implementations may accept a subset of the arguments, so new arguments
can be added to a hook without breaking existing plugins. Names are never
renamed; a changed meaning gets a new hook.
"""

import pluggy

hookspec = pluggy.HookspecMarker("kamengsite")
hookimpl = pluggy.HookimplMarker("kamengsite")


@hookspec
def prepare_site_app(app, site):
    """Called once when the host builds the Flask app of a site.

    ``app`` is the site's ``flask.Flask``; ``site`` is its ``SiteConfig``.
    Register blueprints, template globals or request hooks here. Called only for
    plugins enabled on that site (built-in core plugins are always enabled).
    """


@hookspec
def site_template_context(site):
    """Return a dict of extra variables for every template rendered on ``site``."""


@hookspec
def order_delivered(order, site):
    """Called after the transaction that delivered ``order`` (a ``kamengsite.orders.Order``) committed.

    ``site`` is the selling site's ``SiteConfig``. Use it for notifications
    (the built-in mail plugin sends the keys to the buyer); it must not raise for
    the buyer's sake — the order page shows the keys whatever happens here.
    """


@hookspec
def order_commissions(order, margin_fen):
    """Distribution commissions of a paid order, carved out of what its seller earns on it.

    Exact signature: ``order_commissions(order, margin_fen) -> list[tuple[int, int]]``.
    ``order`` is the paid ``kamengsite.orders.Order`` (``site_id``, ``member_id``,
    ``amount_fen``, ``costs`` …); ``margin_fen`` is what the selling site keeps of it after
    the channel fee (on the main site: the platform's share). Return ``[(member_id, fen), …]``:
    members of the selling site whose frozen commissions (``member_frozen``) are credited, in
    the same ledger transaction as the payment's split (``settlement.release_commissions``
    later moves them to the wallets; a refund takes them back). Called for the plugins the
    selling site enables (whichever domain the payment arrives on), inside the payment's
    database transaction, so it must only read: an exception, or commissions adding up to
    more than ``margin_fen``, roll the payment back (it fails closed: the gateway is
    answered "fail" and retries).
    """


# -- payments (see docs/payments.md and kamengsite/payments.py) ----------------------


@hookspec
def payment_channels(instance):
    """Declare the payment channels this plugin provides: return a list of ``kamengsite.payments.Channel``.

    Exact signature: ``payment_channels(instance) -> list[Channel]``. ``instance`` is the
    ``kamengsite.instance.Instance`` (a plugin that must not run in production returns
    ``[]`` when ``instance.production`` is true). Each ``Channel`` carries its descriptor —
    ``id`` (1-32 chars, ``[a-z0-9_-]``, unique across plugins), ``name``, ``pay_types``
    (tuple of ``PayType(id, name)``), ``settings_schema`` (JSON schema of one credential
    profile; secret fields are marked ``"writeOnly": true``), ``devices`` — and the three
    methods the core calls; every one of them is a plain method, not a hook:

    * ``create_payment(self, profile: Profile, request: PayRequest) -> PaymentAction``:
      what the buyer's browser does next — ``PaymentAction.redirect(url)``,
      ``PaymentAction.qrcode(payload)`` or ``PaymentAction.form(url, fields, method="POST")``
      (an auto-submitting form). May raise ``PaymentError`` with a message for the buyer.
    * ``verify_notification(self, profile: Profile, notice: NotifyRequest, now: float)
      -> Notification | Rejection``: check the signature, merchant and time window of a
      gateway notification **without touching the database**, and parse it into
      ``Notification(order_no, amount_fen, trade_no, status)`` (``status`` is ``"paid"``
      when the gateway says the money arrived) or ``Rejection(reason)``.
    * ``reply(self, ok: bool) -> Reply``: the exact answer the gateway expects,
      ``Reply(body, status=200, content_type="text/plain")``.
    * ``refund(self, profile: Profile, request: RefundRequest) -> RefundResult`` when
      ``supports_refund`` is true: give money back through the gateway (never raises for a
      gateway's "no"). ``needs_member = True`` hides the channel from guests (the balance channel).

    Optional: ``register_routes(self, app, instance)`` adds routes to every site app (the
    sandbox's gateway page uses it). Channels are instance-wide: a channel is offered to
    buyers once the instance's ``payments`` setting configures a profile for it.
    """


# -- checkout: the price pipeline, validation and risk (see kamengsite/checkout.py) ----------


@hookspec
def checkout_inputs(site):
    """Extra inputs of the buy form: return a list of ``kamengsite.checkout.CheckoutInput``.

    Exact signature: ``checkout_inputs(site) -> list[CheckoutInput]``. What the buyer types
    reaches ``checkout.inputs[name]`` (stripped, cut to ``max_length``). The coupons plugin
    asks for a code this way.
    """


@hookspec
def adjust_price(checkout, stage):
    """Change a checkout's price at one stage of the pipeline; must only read the database.

    Exact signature: ``adjust_price(checkout, stage) -> None``. Called once per stage of
    ``kamengsite.checkout.PRICE_STAGES`` — ``"quantity"``, ``"member"``, ``"promotion"``,
    ``"coupon"`` — in that order; act on your stage only. Change the price through
    ``checkout.offer_unit_price(fen, source=, label=)`` (the lowest offer wins) or
    ``checkout.take_off(fen, source=, label=)`` (money off the total); neither goes below
    ``checkout.floor_unit_fen``, the selling site's unit cost. Keep what ``order_reserving``
    needs with ``checkout.note(plugin, **values)``. Also called with ``checkout.preview``
    true to show prices on the product page. A plugin that raises is reported and skipped:
    the buyer pays the price without its change.
    """


@hookspec
def validate_checkout(checkout):
    """Refuse a checkout by raising ``kamengsite.checkout.CheckoutRefused(message)``; must only read.

    Exact signature: ``validate_checkout(checkout) -> None``. Runs after the price pipeline,
    before the order is created; the message is shown to the buyer. Any other exception is
    reported and the plugin skipped.
    """


@hookspec
def assess_risk(checkout):
    """Return a reason (str) to refuse a checkout as too risky, or None; must only read.

    Exact signature: ``assess_risk(checkout) -> str | None``. Runs after
    ``validate_checkout``; the buyer sees a generic refusal, the reason is logged. A plugin
    that raises is reported and skipped.
    """


@hookspec
def risk_rules(site):
    """Return risk rules (a list) that ``kamengsite.risk`` runs on each new order of ``site``.

    Exact signature: ``risk_rules(site) -> list``. Each rule has a ``name`` and
    ``evaluate(facts) -> Verdict | "hold" | "refuse" | None`` (``facts``: a
    ``kamengsite.risk.OrderFacts``, inside the order's creating transaction after the
    buyer's gate is locked, so ``facts.count_orders(seconds, buyer_ip=…)`` includes this
    order). "hold" puts the order in the review queue; "refuse" rolls it back with a generic
    message. A rule that raises holds the order; a plugin whose hook raises is skipped.
    """


# -- order lifecycle ----------------------------------------------------------------------


@hookspec
def order_reserving(order, checkout):
    """Take what the order needs from the plugin's own rows, inside the order's creating transaction.

    Exact signature: ``order_reserving(order, checkout) -> None``. ``order`` has its id and
    number; its stock is already reserved. Conditional updates here (a flash sale's sold count,
    a coupon's uses) commit with the order or not at all. Raise
    ``CheckoutRefused(message)`` to refuse the order (the buyer sees the message). It fails
    closed: any exception rolls the order back.
    """


@hookspec
def order_created(order, site):
    """Called after the transaction that created ``order`` committed (``site``: the selling site's ``SiteConfig``).

    Exact signature: ``order_created(order, site) -> None``. A plugin that raises is
    reported and skipped; the order stands.
    """


@hookspec
def order_paid(order, site):
    """Called after a payment of ``order`` committed and the order is paid (delivered or not).

    Exact signature: ``order_paid(order, site) -> None``. Called once per recorded payment
    that paid the order (never for a replayed notification). A plugin that raises is
    reported and skipped; the payment stands.
    """


@hookspec
def order_expiring(order):
    """Give back what ``order_reserving`` took, inside the transaction that expires ``order``.

    Exact signature: ``order_expiring(order) -> None``. Called for the plugins of the order's
    site when an unpaid order expires. It fails closed: an exception rolls this order's expiry
    back (the sweep tries again next minute) and is reported.
    """


@hookspec
def order_refunded(order, refund, site):
    """Called after the transaction that recorded ``refund`` (a ``kamengsite.refunds.Refund``) of ``order`` committed.

    Exact signature: ``order_refunded(order, refund, site) -> None``. A plugin that raises is
    reported and skipped; the refund stands.
    """


# -- upstream suppliers (docking, see docs/upstreams.md) --------------------------------------


@hookspec
def supply_order(order):
    """A paid order of a product an upstream supplies (``product.supplier`` names the plugin): start supplying it.

    Exact signature: ``supply_order(order) -> None``. Called for every installed plugin (not
    per site: the operator docks upstreams for all sites) after the payment committed; the
    plugin whose name is ``order.product.supplier`` queues the forwarding and the others
    return. It must not raise for the buyer's sake: the supplier plugin's own periodic sweep
    picks up every paid order it has not forwarded yet, so a failure here only delays.
    Deliver with ``kamengsite.orders.deliver_supplied`` when the upstream answers.
    """


@hookspec
def upstream_connectors(instance):
    """Protocols this plugin can dock to as upstream suppliers: return a list of connector classes.

    Exact signature: ``upstream_connectors(instance) -> list[type]``. Each class has a unique
    ``protocol`` id (``[a-z0-9_-]``), a ``label``, a ``settings_schema`` (JSON schema of one
    upstream's connection settings; secrets ``"writeOnly": true``) and the methods of
    ``kamengsite_upstreams.connectors.Connector``: ``products()``, ``stock(refs)``,
    ``place_order(ref, quantity, idempotency_key, fields)`` and ``query_order(idempotency_key,
    upstream_order_no="")`` (the upstream's own order number is passed when it is known: some
    upstreams find orders only by it). A refusal raises ``UpstreamError`` (``retryable`` for
    transport failures; ``already_placed`` when the upstream already holds an order under that
    key, which is never refunded). The upstreams plugin instantiates one per docked upstream.
    """


# -- what a plugin adds to sites, consoles, the worker and the CLI ---------------------------


@hookspec
def plugin_settings_schema():
    """The JSON schema of this plugin's per-site settings (``[settings.<plugin>]`` in ``site.toml``).

    Exact signature: ``plugin_settings_schema() -> dict``. An ``"object"`` schema whose
    properties have a ``"title"`` (the form label) and a ``"default"``; strings marked
    ``"writeOnly": true`` are secrets: never shown back, and may be given as ``"env:NAME"``.
    The owner's console renders it as a validated form ("插件" page); the host validates the
    settings when it builds the site and hands plugins the result through
    ``kamengsite.plugin_settings.settings_for(site, plugin)``.
    """


@hookspec
def admin_menu(site):
    """Links this plugin adds to a site's console menu: return ``[(label, endpoint), …]``.

    Exact signature: ``admin_menu(site) -> list[tuple[str, str]]``. ``endpoint`` is a Flask
    endpoint the plugin registered (in ``prepare_site_app``) on that site's app; the page should
    use ``kamengsite.admin.operator_required``.
    """


@hookspec
def theme_sections(site):
    """Sections this plugin offers to a site's pages: return a list of ``kamengsite.sections.Section``.

    Exact signature: ``theme_sections(site) -> list[Section]``. A ``Section(name, label,
    render)`` renders HTML (``render(context) -> markupsafe.Markup``; ``context`` has
    ``page``, ``product`` on a product page, ``member_id``). Themes place sections by name;
    pages without a layout show them at their foot. A section that raises is left out.
    """


@hookspec
def register_jobs(huey, instance):
    """Add background tasks (periodic or queued) to the instance's huey.

    Exact signature: ``register_jobs(huey, instance) -> None``. Called once per process when
    the job queue is built; use ``@huey.periodic_task(crontab(...))``. Tasks must be safe to
    run twice or concurrently. A plugin that raises here is reported and skipped.
    """


@hookspec
def operational_checks(instance):
    """Problems this plugin sees in its own operation, for the operator's alerts (故障预警).

    Exact signature: ``operational_checks(instance) -> list[tuple[str, str, str]]``. Return
    ``[(kind, key, detail), …]``, one tuple per problem that exists *now* (``[]`` when all is
    well): ``kind`` names the check (1-32 chars, e.g. ``"upstream_failing"``), ``key`` what it is
    about (at most 120 chars, e.g. ``"upstream/3"``), ``detail`` a line for the operator. Called
    for every installed plugin by the incidents job every minute (``kamengsite.incidents``), so
    it must only read and be quick. A problem reported opens an incident and notifies the
    operator once; when it is no longer reported the incident clears (one "cleared" notice).
    A plugin that raises is reported and skipped, and no incident of a plugin is cleared in
    that run.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``kamengsite`` command line: ``cli`` is the top ``click.Group``.

    Exact signature: ``register_commands(cli) -> None``. Use ``kamengsite.cli.bound_database(instance)``
    inside a command to reach the database. A plugin that raises here is reported and skipped.
    """

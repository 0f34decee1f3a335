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
    members of the selling site whose wallets are credited, in the same ledger transaction
    as the payment's split. Called for the plugins the selling site enables (whichever domain
    the payment arrives on), inside the payment's database transaction, so it must only
    read: an exception, or commissions adding up to more than ``margin_fen``, roll the payment
    back (it fails closed: the gateway is answered "fail" and retries).
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

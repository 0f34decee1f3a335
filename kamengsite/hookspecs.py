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

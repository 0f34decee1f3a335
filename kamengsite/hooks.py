"""Calling plugin hooks for one site — inside a request or not — and isolating the plugins that fail.

* ``site_hook(site_id)``: the hook relay of the plugins a site enables: the current site
  app's relay inside its own requests; otherwise built from the site's folder (a payment
  notification on another domain, the job worker, the CLI).
* ``call_isolated(caller, hook, **kwargs)``: every implementation called on its own; one that
  raises is logged, recorded in ``plugin_error`` (``kamengsite plugins list``, the operator's
  console) and skipped. For hooks whose failure loses nothing (notifications, price display).
  Money hooks (``order_reserving``, ``order_expiring``, ``order_commissions``) are called
  plainly and fail closed.
"""

from __future__ import annotations

import inspect
import logging
import threading

from . import hookspecs
from .plugins import PluginHost, record_failure

log = logging.getLogger(__name__)

_runtime: dict = {}
_lock = threading.Lock()


def bind(plugins: PluginHost, registry=None):
    """Use ``plugins`` (and a ``SiteRegistry``) for hooks called outside a site request (the host binds its own)."""
    _runtime.clear()
    _runtime.update(plugins=plugins, registry=registry)


def _plugins_and_registry():
    """The current site app's plugin host, else this process's (bound by the host, or made on first use),
    and a site registry to read site folders with (None while no instance is known)."""
    from flask import current_app, has_app_context

    from . import jobs, opening

    if has_app_context() and "kamengsite.plugins" in current_app.extensions:
        return current_app.extensions["kamengsite.plugins"], opening.registry_for(
            current_app.extensions["kamengsite.site"].instance)
    with _lock:
        if _runtime.get("plugins") is None:
            _runtime["plugins"] = PluginHost()  # a worker or a command: no host was built
        if _runtime.get("registry") is None:
            instance = jobs.current_instance()
            _runtime["registry"] = opening.registry_for(instance) if instance is not None else None
    return _runtime["plugins"], _runtime["registry"]


def instance_plugins() -> PluginHost:
    """The plugin host of this process (the current site app's, the bound one, or a new one)."""
    return _plugins_and_registry()[0]


def expiring_callback():
    """The ``expiring`` callback of ``orders.expire_due``: each order's site's ``order_expiring`` hooks,
    failing closed; None when no installed plugin implements the hook."""
    if not instance_plugins().pm.hook.order_expiring.get_hookimpls():
        return None
    relays = {}

    def expiring(order):
        if order.site_id not in relays:
            relays[order.site_id] = site_hook(order.site_id)
        call_isolated(relays[order.site_id].order_expiring, "order_expiring", site_id=order.site_id,
                      fail_closed=True, order=order)

    return expiring


def site_hook(site_id: int):
    """The hook relay for ``site_id``'s enabled plugins (the core plugins only if its folder is unreadable)."""
    from flask import current_app, has_app_context

    if has_app_context():
        site = current_app.extensions.get("kamengsite.site")
        if site is not None and site.site_id == site_id:
            return current_app.extensions["kamengsite.hook"]
    config = site_config(site_id)
    return instance_plugins().hook_for(tuple(config.plugins) if config is not None else ())


def site_config(site_id: int):
    """The ``SiteConfig`` of ``site_id`` (the current site's inside its requests), or None (logged)."""
    from flask import current_app, has_app_context

    if has_app_context():
        site = current_app.extensions.get("kamengsite.site")
        if site is not None and site.site_id == site_id:
            return site.config
    _, registry = _plugins_and_registry()
    if registry is None:
        return None
    from .models import Site

    try:
        return registry.load(Site.get_by_id(site_id).slug)
    except Exception:  # noqa: BLE001 - an unreadable folder: the caller falls back, and it is said here
        log.exception("site %s's folder could not be read; only the core plugins are called for it", site_id)
        return None


def call_isolated(caller, hook: str, *, site_id: int | None = None, passthrough=(), fail_closed: bool = False,
                  **kwargs) -> list:
    """Call each implementation of ``caller`` (e.g. ``relay.order_paid``) alone; skip and report the ones that raise.

    Returns the non-None results, like pluggy does (last registered first). Exceptions of a
    ``passthrough`` type are a plugin's answer (``CheckoutRefused``) and propagate; with
    ``fail_closed`` any other exception is reported and then propagates too.
    """
    results = []
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(*[kwargs[name] for name in impl.argnames])
        except passthrough:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not reach the buyer
            log.exception("plugin %s failed in %s%s", impl.plugin_name, hook, "" if fail_closed else "; skipped")
            if fail_closed:
                # Inside a transaction that is about to roll back: the caller records it afterwards.
                exc.kamengsite_failed = (impl.plugin_name, hook)
                raise
            record_failure(impl.plugin_name, hook, exc, site_id=site_id)
            continue
        if result is not None:
            results.append(result)
    return results


def record_closed_failure(exc: BaseException, site_id: int | None = None) -> bool:
    """Record a fail-closed hook's exception once its transaction has rolled back; False if no plugin raised it."""
    failed = getattr(exc, "kamengsite_failed", None)
    if failed is None:
        return False
    record_failure(*failed, exc, site_id=site_id)
    return True


def notify(hook: str, order, **kwargs) -> list:
    """Call an order lifecycle hook (``order_created``, ``order_paid``, …) for the order's site, isolated."""
    relay = site_hook(order.site_id)
    if "site" in _argnames(hook) and "site" not in kwargs:
        kwargs["site"] = site_config(order.site_id)
    return call_isolated(getattr(relay, hook), hook, site_id=order.site_id, order=order, **kwargs)


def supply(order) -> list:
    """``supply_order`` for every installed plugin (suppliers are instance-wide), each alone."""
    return call_isolated(instance_plugins().pm.hook.supply_order, "supply_order", site_id=order.site_id, order=order)


def _argnames(hook: str) -> tuple:
    return tuple(inspect.signature(getattr(hookspecs, hook)).parameters)

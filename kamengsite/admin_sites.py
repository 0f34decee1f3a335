"""Sub-sites in the consoles: a core plugin.

On the main site, the operator's pages under ``/admin/sites/`` (``admin.operator_required``,
the console's headers and layout): applications to approve or reject with a reason, every
site with its level, parent, state, term and balance, suspend / resume / close, run the
expiry check now, and the levels (read-only).

On every sub-site, its owner's console under ``/admin/``: sign in with the account created
when the site was opened, see the site's state, term and balance, renew, change level, and
bind the site's own domains (claims and proofs of this site only: ``DomainClaim`` rows are
tenant rows, so another site's claims are never found here). The host lets ``/admin/``
through while a site is off, so an owner can renew an expired site.

Every write is a POST form with a CSRF token.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import InputRequired, Length

from . import admin, domains, ledger, opening
from .app import current_site
from .hookspecs import hookimpl
from .i18n import _, _l, format_when
from .levels import all_levels, get_level
from .models import Site
from .ratelimit import limited

# -- forms ------------------------------------------------------------------------------------


class ActionForm(FlaskForm):
    """A button: nothing but the CSRF token."""


class ReasonForm(FlaskForm):
    reason = StringField(_l("Reason"), validators=[Length(max=500, message=_l("At most 500 characters"))])


class RenewForm(FlaskForm):
    pay_from = SelectField(_l("Pay from"), choices=[admin._option("site", _l("Sub-site balance")),
                                                    admin._option("wallet", _l("The opener's member wallet"))])


class LevelForm(FlaskForm):
    level = SelectField(_l("New level"), validate_choice=False)


class ClaimForm(FlaskForm):
    domain = StringField(_l("Domain"), validators=[InputRequired(_l("Please enter a domain")), Length(max=253)])


class VerifyForm(FlaskForm):
    method = SelectField(_l("Verification method"), choices=[admin._option(k, v) for k, v in domains.METHODS.items()])


class UnbindForm(FlaskForm):
    domain = StringField(_l("Domain"), validators=[InputRequired(), Length(max=253)])


def _registry():
    return opening.registry_for(current_site().instance)


# -- the operator's pages (main site) ------------------------------------------------------------

operator_bp = Blueprint("admin_sites", __name__, url_prefix="/admin/sites")
operator_bp.after_request(admin._console_headers)  # no-store, no framing, no script: as every console page
operator_bp.context_processor(admin._console_context)  # the layout's log-out form


def _post_action(form, action, success, errors, back: str, prefix: str = ""):
    """A console POST: the CSRF-checked ``form`` (else 400), one ``action()``, its outcome flashed
    (``success(result)``, or the error's own words), then back to the page."""
    if not form.validate_on_submit():
        abort(400)
    try:
        flash(success(action()), "ok")
    except errors as exc:
        flash(f"{prefix}{exc}", "error")
    return redirect(back)


@operator_bp.get("/")
@admin.operator_required
def sites():
    summaries = [s for s in opening.site_summaries(_registry()) if s.slug != current_site().slug]
    pending = opening.SiteApplication.select().where(opening.SiteApplication.status == "requested").count()
    return render_template("admin/sites.html", summaries=summaries, pending=pending, action=ActionForm(),
                           reason_form=ReasonForm(formdata=None))


@operator_bp.post("/<slug>/<any(suspend, resume, close):action>")
@admin.operator_required
def site_action(slug, action):
    registry = _registry()
    if slug not in registry.slugs() or slug == registry.main_site:
        abort(404)
    form = ReasonForm()
    reason = (form.reason.data or "").strip()
    do, message = {
        "suspend": (lambda: opening.suspend(registry, slug, reason),
                    _("Suspended sub-site \"%(slug)s\": its shop shows it is closed, orders and balances are unchanged",
                      slug=slug)),
        "resume": (lambda: opening.resume(registry, slug), _("Resumed sub-site \"%(slug)s\"", slug=slug)),
        "close": (lambda: opening.close(registry, slug, reason), _("Closed sub-site \"%(slug)s\"", slug=slug)),
    }[action]
    return _post_action(form, do, lambda _result: message, opening.OpeningError, url_for("admin_sites.sites"))


@operator_bp.post("/expire")
@admin.operator_required
def expire_now():
    if not ActionForm().validate_on_submit():
        abort(400)
    done = opening.expire_sites(_registry())
    flash(_("Expiry check done: %(expired)s turned off, %(reopened)s turned back on", expired=len(done["expired"]),
            reopened=len(done["reopened"])), "ok")
    return redirect(url_for("admin_sites.sites"))


@operator_bp.get("/applications")
@admin.operator_required
def applications():
    status = request.args.get("status", "requested")
    if status not in (*opening.STATUSES, "all"):
        status = "requested"
    rows = opening.applications(None if status == "all" else status)
    parents = {s.id: s.slug for s in Site.select(Site.id, Site.slug)}
    return render_template("admin/sites_applications.html", rows=rows, status=status, statuses=opening.STATUS_LABELS,
                           parents=parents, action=ActionForm(), reason_form=ReasonForm(formdata=None),
                           field_labels=opening.FIELD_LABELS)


@operator_bp.post("/applications/<int:application_id>/approve")
@admin.operator_required
def approve(application_id):
    return _post_action(ActionForm(), lambda: opening.approve(_registry(), application_id),
                        lambda app: _("Opened sub-site \"%(slug)s\" (%(notice)s)", slug=app.slug,
                                      notice=app.notice_label or _("not notified")),
                        opening.OpeningError, url_for("admin_sites.applications"))


@operator_bp.post("/applications/<int:application_id>/reject")
@admin.operator_required
def reject(application_id):
    form = ReasonForm()
    return _post_action(form, lambda: opening.reject(_registry(), application_id, form.reason.data or ""),
                        lambda app: _("Rejected the application for \"%(slug)s\" (%(notice)s)", slug=app.slug,
                                      notice=app.notice_label or _("not notified")),
                        opening.OpeningError, url_for("admin_sites.applications"))


@operator_bp.get("/levels")
@admin.operator_required
def levels():
    return render_template("admin/sites_levels.html", levels=all_levels())


# -- the owner's console (sub-sites) ----------------------------------------------------------

# The owner's pages on a sub-site; signing in and out are admin.py's (the console of every site).
owner_bp = Blueprint("owner", __name__, url_prefix="/admin")
owner_bp.after_request(admin._console_headers)
owner_bp.context_processor(admin._console_context)  # the layout's log-out form and the owner's menu


def _site() -> Site:
    return Site.get_by_id(current_site().site_id)


@owner_bp.get("/")
@admin.operator_required
def home():
    site = _site()
    config = current_site().config
    level = get_level(site.level)
    available = ledger.balance(ledger.account("site_available", site=site.id))
    frozen = ledger.balance(ledger.account("site_frozen", site=site.id))
    level_form = LevelForm(formdata=None)
    level_form.level.choices = [admin._option(lv.code, lv.name) for lv in all_levels()
                                if lv.self_service or lv.code == site.level]
    level_form.level.data = site.level
    return render_template("admin/sites_owner_home.html", site_row=site, level=level,
                           state=opening.lifecycle_state(config), states=opening.LIFECYCLE_LABELS, available=available, frozen=frozen,
                           renew_form=RenewForm(formdata=None), level_form=level_form)


@owner_bp.post("/renew")
@admin.operator_required
def renew():
    form = RenewForm()
    return _post_action(form, lambda: opening.renew(_registry(), current_site().slug, pay_from=form.pay_from.data),
                        lambda until: _("Renewed: the term now ends %(when)s", when=format_when(until)),
                        opening.OpeningError, url_for("owner.home"))


@owner_bp.post("/level")
@admin.operator_required
def change_level():
    form = LevelForm()
    return _post_action(form, lambda: opening.change_level(_registry(), current_site().slug, form.level.data or "",
                                                           self_service_only=True),
                        lambda _result: _("Level changed"), opening.OpeningError, url_for("owner.home"))


def _checkers() -> dict:
    """The fetcher and resolver for proofs; tests put fakes in ``app.extensions``."""
    return current_app.extensions.get("kamengsite.domain_checkers", {})


@owner_bp.route("/domains", methods=["GET", "POST"])
@admin.operator_required
def domain_list():
    form = ClaimForm()
    if form.validate_on_submit():
        try:
            found = domains.claim(_site(), form.domain.data, base_domain=current_site().instance.base_domain)
            flash(_("Claimed %(domain)s, please verify it as described below", domain=found.domain), "ok")
            return redirect(url_for("owner.domain_list"))
        except domains.DomainError as exc:
            form.domain.errors.append(str(exc))
    level = get_level(_site().level)
    return render_template("admin/sites_owner_domains.html", form=form,
                           claims=domains.claims_of(current_site().site_id), bound=current_site().config.domains,
                           may_bind=bool(level and level.may_bind_domain), verify_form=VerifyForm(formdata=None),
                           action=ActionForm(), unbind_form=UnbindForm(formdata=None))


@owner_bp.post("/domains/<int:claim_id>/verify")
@admin.operator_required
@limited("domain_verify", "10/minute")  # each proof may fetch a URL or query DNS
def domain_verify(claim_id):
    _claim_or_404(claim_id)
    form = VerifyForm()
    return _post_action(form, lambda: domains.verify(_registry(), current_site().site_id, claim_id, form.method.data,
                                                     **_checkers()),
                        lambda found: _("Verified: %(domain)s is now bound to this site", domain=found.domain),
                        domains.DomainError, url_for("owner.domain_list"), prefix=_("Verification failed: "))


def _claim_or_404(claim_id: int):
    """A domain claim of this site, or a 404 (another site's claim is as absent as none)."""
    if not any(claim.id == claim_id for claim in domains.claims_of(current_site().site_id)):
        abort(404)


@owner_bp.post("/domains/<int:claim_id>/cancel")
@admin.operator_required
def domain_cancel(claim_id):
    _claim_or_404(claim_id)
    return _post_action(ActionForm(), lambda: domains.cancel(current_site().site_id, claim_id),
                        lambda _result: _("Cancelled"),
                        domains.DomainError, url_for("owner.domain_list"))


@owner_bp.post("/domains/unbind")
@admin.operator_required
def domain_unbind():
    form = UnbindForm()
    return _post_action(form, lambda: domains.unbind(_registry(), _site(), form.domain.data),
                        lambda _result: _("Unbound %(domain)s", domain=form.domain.data), domains.DomainError,
                        url_for("owner.domain_list"))


# -- plugin -----------------------------------------------------------------------------------


@hookimpl
def prepare_site_app(app, site):
    """The operator's pages on the main site; the owner's console on every other site."""
    context = app.extensions.get("kamengsite.site")
    if context is None:
        return
    app.register_blueprint(operator_bp if site.slug == context.instance.main_site else owner_bp)

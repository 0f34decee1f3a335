"""Theme sections that plugins offer (``theme_sections`` hook): named blocks of HTML on a site's pages.

A page layout places them with its ``plugin`` section (one named section, or all of
them in plugin order); a section appears only on the page types in its ``pages``.
A section that raises is logged and left out: a broken widget never breaks the page.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from markupsafe import Markup

from . import layouts

log = logging.getLogger(__name__)

#: The page types a section may name in ``pages``.
PAGES = layouts.PAGES


@dataclass(frozen=True)
class Section:
    """``render(context) -> Markup``; ``context``: ``page``, ``site``, ``product`` (product page), ``member_id``."""

    name: str  # unique per site, e.g. "recently_viewed"
    label: str  # for owners arranging pages, e.g. _l("Recently viewed"): lazy, so shown in each owner's language
    render: Callable[[dict], Markup]
    pages: tuple = ("home", "product")


def render_sections(sections, context: dict, *, only=None) -> Markup:
    """The HTML of ``sections`` (those named in ``only``, in that order, if given) for one page."""
    page = context.get("page")
    chosen = [s for s in sections if page in s.pages]
    if only is not None:
        by_name = {s.name: s for s in chosen}
        chosen = [by_name[name] for name in only if name in by_name]
    parts = []
    for section in chosen:
        try:
            html = section.render(context)
        except Exception:  # noqa: BLE001 - one broken section must not break the page
            log.exception("theme section %s failed to render", section.name)
            continue
        if html:
            parts.append(Markup('<section class="plugin-section" data-section="{}">{}</section>').format(
                section.name, html))  # a plain str is escaped, Markup kept
    return Markup("").join(parts)

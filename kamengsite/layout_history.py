"""Published versions of a page's layout, and undo of draft changes (what the theme editor writes).

History: every publish records the layout it publishes, with when and who, under
``sites/<slug>/layouts/history/<page_key>/<UTC timestamp>-<n>.json`` (``n`` grows by one per
entry, so names sort in publishing order); the newest ``HISTORY_KEEP`` per page are kept. The
first publish of a page also records what was shown before it (the published file written
before there was a history, or the theme's default), so even the first publish can be undone.
Restoring a version publishes it again, itself a new entry: a restore can be undone too.

Undo: every change of a page's draft first records the draft as it was (or that there was
none) under ``layouts/undo/<page_key>/<n>.json``, newest ``UNDO_KEEP`` kept; ``undo`` puts the
newest back. Publishing or restoring starts a new undo stack: going back past a publish is
what the history is for.

All files are written atomically (``layouts._write_json``); entry names are claimed with
``O_EXCL``, so two writers never take the same number.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from . import layouts
from .i18n import _

HISTORY_KEEP = 30
UNDO_KEEP = 50
HISTORY_DIR = "history"
UNDO_DIR = "undo"
VERSION_RE = re.compile(r"^(\d{8}T\d{6}Z)-(\d{1,9})$")
UNDO_RE = re.compile(r"^(\d{1,9})$")
#: Who published the versions recorded before the editor's first publish (stored as ``by``; shown translated).
THEME_DEFAULT = "(theme default)"
EARLIER = "(published before the editor)"
_LEGACY_BY = {"（主题默认）": THEME_DEFAULT, "（编辑器之前发布）": EARLIER}  # i18n: keep - history files written before
RESTORED_RE = re.compile(r"^(?:restored from|恢复自) (\S+)$")  # i18n: keep - older notes were written in Chinese

_lock = threading.Lock()  # one writer per process at a time; O_EXCL guards across processes


@dataclass(frozen=True)
class Version:
    """One published version: ``id`` (the file's stem), when, by whom, and a note (e.g. a restore)."""

    id: str
    number: int
    at: datetime.datetime
    by: str
    note: str = ""

    def who(self) -> str:
        """``by`` for a page: the stored markers of the theme default and earlier publishes, translated."""
        by = _LEGACY_BY.get(self.by, self.by)
        if by == THEME_DEFAULT:
            return _("(theme default)")
        if by == EARLIER:
            return _("(published before the editor)")
        return self.by

    def shown_note(self) -> str:
        """``note`` for a page: a restore's note, translated."""
        match = RESTORED_RE.match(self.note)
        if match:
            return _("Restored from %(version)s", version=match.group(1))
        return self.note


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _page_dir(site_folder, page_key: str, kind: str) -> Path:
    layouts.layout_path(site_folder, page_key)  # ValueError for a page key that is not one
    return Path(site_folder) / layouts.LAYOUTS_DIR / kind / page_key


def history_dir(site_folder, page_key: str) -> Path:
    return _page_dir(site_folder, page_key, HISTORY_DIR)


def undo_dir(site_folder, page_key: str) -> Path:
    return _page_dir(site_folder, page_key, UNDO_DIR)


def _numbered(folder: Path, pattern: re.Pattern, group: int) -> list[tuple[int, Path]]:
    """(n, path) of the entries in ``folder``, oldest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.endswith(".json"):
            match = pattern.match(name[:-5])
            if match:
                found.append((int(match.group(group)), folder / name))
    return sorted(found)


def _claim(folder: Path, name_for, start: int) -> Path:
    """A new, empty entry file named ``name_for(n)`` for the first free ``n`` from ``start``."""
    folder.mkdir(parents=True, exist_ok=True)
    n = start
    while True:
        path = folder / name_for(n)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            n += 1


def _write_entry(folder: Path, pattern, group, name_for, entry: dict, keep: int) -> Path:
    with _lock:
        existing = _numbered(folder, pattern, group)
        path = _claim(folder, name_for, (existing[-1][0] + 1) if existing else 1)
        layouts._write_json(path, entry)
        for _number, old in _numbered(folder, pattern, group)[:-keep]:
            _remove(old)
    return path


def _remove(path: Path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _read(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, OSError):  # a half-copied or hand-edited file: skipped
        return None


# -- history -------------------------------------------------------------------------------------


def _record(site_folder, page_key: str, data: dict, *, by: str, note: str = "", at=None) -> Path:
    at = at or _utcnow()
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    entry = {"at": at.isoformat(), "by": by, "note": note, "layout": data}
    return _write_entry(history_dir(site_folder, page_key), VERSION_RE, 2, lambda n: f"{stamp}-{n}.json",
                        entry, HISTORY_KEEP)


def versions(site_folder, page_key: str) -> list[Version]:
    """The recorded versions of a page, newest first (the newest is the one published now)."""
    found = []
    for number, path in reversed(_numbered(history_dir(site_folder, page_key), VERSION_RE, 2)):
        entry = _read(path)
        if not isinstance(entry, dict) or not isinstance(entry.get("layout"), dict):
            continue
        try:
            at = datetime.datetime.fromisoformat(entry.get("at", ""))
        except (TypeError, ValueError):
            at = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
        found.append(Version(id=path.stem, number=number, at=at, by=str(entry.get("by", "")),
                             note=str(entry.get("note", ""))))
    return found


def load_version(site_folder, page_key: str, version_id: str) -> dict:
    """The layout of version ``version_id``; ``KeyError`` if there is no such version."""
    if not isinstance(version_id, str) or not VERSION_RE.match(version_id):
        raise KeyError(version_id)
    entry = _read(history_dir(site_folder, page_key) / f"{version_id}.json")
    if not isinstance(entry, dict) or not isinstance(entry.get("layout"), dict):
        raise KeyError(version_id)
    return entry["layout"]


def _shown_before(site_folder, page_key: str, theme) -> tuple[dict | None, str, datetime.datetime | None]:
    """What the page showed before its first recorded publish: (layout, by, when)."""
    published = layouts.layout_path(site_folder, page_key)
    data = _read(published)
    if isinstance(data, dict):
        at = datetime.datetime.fromtimestamp(published.stat().st_mtime, datetime.timezone.utc).replace(microsecond=0)
        return data, EARLIER, at
    default = theme_default(theme, page_key)
    return default, THEME_DEFAULT, None


def theme_default(theme, page_key: str) -> dict:
    """The theme's default layout of a page, as layout JSON."""
    kind = layouts.page_type(page_key)
    default = theme.layouts.get(kind) or layouts.fallback_layout(kind, theme.section_types)
    return layouts.layout_data(default)


def publish(site_folder, page_key: str, data, *, theme, by: str, note: str = "") -> Path:
    """Validate and publish ``data`` (``ConfigError``, nothing written, if it does not fit), record it
    in the history, and start a new undo stack."""
    first = not versions(site_folder, page_key)
    before = _shown_before(site_folder, page_key, theme) if first else (None, "", None)
    path = layouts.save_layout(site_folder, page_key, data, theme=theme, publish=True)
    if before[0] is not None:
        at = before[2] or _utcnow() - datetime.timedelta(seconds=1)
        _record(site_folder, page_key, before[0], by=before[1], at=at)
    _record(site_folder, page_key, data, by=by, note=note)
    clear_undo(site_folder, page_key)
    return path


def restore(site_folder, page_key: str, version_id: str, *, theme, by: str) -> Path:
    """Publish version ``version_id`` again (``KeyError`` if unknown, ``ConfigError`` if it no longer fits)."""
    data = load_version(site_folder, page_key, version_id)
    return publish(site_folder, page_key, data, theme=theme, by=by, note=f"restored from {version_id}")


# -- drafts and undo -----------------------------------------------------------------------------


def published(site_folder, page_key: str):
    """The page's published layout as stored, or None when it has none (the theme's default is shown)."""
    data = _read(layouts.layout_path(site_folder, page_key))
    return data if isinstance(data, dict) else None


def draft(site_folder, page_key: str):
    """The page's draft layout, or None when it has none."""
    data = _read(layouts.layout_path(site_folder, page_key, draft=True))
    return data if isinstance(data, dict) else None


def _push_undo(site_folder, page_key: str, previous, *, by: str) -> Path:
    entry = {"at": _utcnow().isoformat(), "by": by, "draft": previous}
    return _write_entry(undo_dir(site_folder, page_key), UNDO_RE, 1, lambda n: f"{n:06d}.json", entry, UNDO_KEEP)


def save_draft(site_folder, page_key: str, data, *, theme, by: str) -> Path:
    """Validate and save ``data`` as the page's draft (``ConfigError``, nothing written, if it does not
    fit); the draft it replaces goes onto the undo stack."""
    previous = draft(site_folder, page_key)
    path = layouts.save_layout(site_folder, page_key, data, theme=theme, publish=False)
    if previous != data:
        _push_undo(site_folder, page_key, previous, by=by)
    return path


def discard_draft(site_folder, page_key: str, *, by: str) -> bool:
    """Remove the page's draft (undoable); False if there was none."""
    previous = draft(site_folder, page_key)
    if previous is None:
        return False
    _push_undo(site_folder, page_key, previous, by=by)
    _remove(layouts.layout_path(site_folder, page_key, draft=True))
    return True


def undo_depth(site_folder, page_key: str) -> int:
    return len(_numbered(undo_dir(site_folder, page_key), UNDO_RE, 1))


def undo(site_folder, page_key: str) -> bool:
    """Put the draft back as it was before its last change; False when there is nothing to undo.

    The state is written as it was recorded (it was valid then; a theme switched meanwhile is
    handled as for any stored layout: read leniently).
    """
    with _lock:
        entries = _numbered(undo_dir(site_folder, page_key), UNDO_RE, 1)
        while entries:
            _number, path = entries.pop()
            entry = _read(path)
            _remove(path)
            if not isinstance(entry, dict) or "draft" not in entry:
                continue  # unreadable: skip to the one before
            target = layouts.layout_path(site_folder, page_key, draft=True)
            if isinstance(entry["draft"], dict):
                layouts._write_json(target, entry["draft"])
            else:
                _remove(target)
            return True
    return False


def clear_undo(site_folder, page_key: str):
    with _lock:
        for _number, path in _numbered(undo_dir(site_folder, page_key), UNDO_RE, 1):
            _remove(path)

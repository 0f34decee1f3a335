"""Published versions and undo of page layouts (kamengsite/layout_history.py), on files in a site folder."""

from __future__ import annotations

import copy
import json
import re

import pytest

from kamengsite import layout_history as history, layouts
from kamengsite.errors import ConfigError
from kamengsite.instance import PROJECT_ROOT
from kamengsite.themes import load_theme


@pytest.fixture(scope="module")
def theme():
    return load_theme(PROJECT_ROOT / "themes" / "light")


@pytest.fixture
def folder(tmp_path):
    site = tmp_path / "shop1"
    site.mkdir()
    return site


def home(theme, text: str) -> dict:
    data = copy.deepcopy(history.theme_default(theme, "home"))
    data["sections"]["announcement"]["settings"]["text"] = text
    return data


def text_of(data) -> str:
    return data["sections"]["announcement"]["settings"]["text"]


def published(folder) -> dict:
    return json.loads(layouts.layout_path(folder, "home").read_text(encoding="utf-8"))


def test_publishing_twice_keeps_the_earlier_version_and_restore_publishes_it(folder, theme):
    history.publish(folder, "home", home(theme, "第一版"), theme=theme, by="owner")
    history.publish(folder, "home", home(theme, "第二版"), theme=theme, by="boss")
    found = history.versions(folder, "home")
    # Newest first: what is published now, the earlier version, and the theme's default shown before.
    assert [text_of(history.load_version(folder, "home", v.id)) for v in found[:2]] == ["第二版", "第一版"]
    assert [v.by for v in found] == ["boss", "owner", history.THEME_DEFAULT]
    assert found[-1].id and history.load_version(folder, "home", found[-1].id) == history.theme_default(theme, "home")
    names = sorted(p.name for p in history.history_dir(folder, "home").iterdir())
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-\d+\.json", name) for name in names), names
    assert history.history_dir(folder, "home") == folder / "layouts" / "history" / "home"

    history.restore(folder, "home", found[1].id, theme=theme, by="owner")
    assert text_of(published(folder)) == "第一版"
    again = history.versions(folder, "home")
    assert len(again) == 4 and again[0].note.startswith("restored from") and found[1].id in again[0].note
    history.restore(folder, "home", again[1].id, theme=theme, by="owner")  # the restore itself is undone
    assert text_of(published(folder)) == "第二版"


def test_the_first_publish_keeps_a_layout_published_before_there_was_a_history(folder, theme):
    layouts.save_layout(folder, "home", home(theme, "手写的版本"), theme=theme, publish=True)
    history.publish(folder, "home", home(theme, "编辑器的版本"), theme=theme, by="owner")
    found = history.versions(folder, "home")
    assert [v.by for v in found] == ["owner", history.EARLIER]
    assert text_of(history.load_version(folder, "home", found[1].id)) == "手写的版本"


def test_a_layout_that_does_not_fit_is_not_published_nor_recorded(folder, theme):
    bad = home(theme, "x")
    bad["sections"]["announcement"]["settings"]["background"] = "blue"
    with pytest.raises(ConfigError) as caught:
        history.publish(folder, "home", bad, theme=theme, by="owner")
    assert caught.value.key == "sections.announcement.settings.background"
    assert history.versions(folder, "home") == []
    assert not layouts.layout_path(folder, "home").exists()


def test_history_keeps_the_newest_versions_only(folder, theme):
    for i in range(history.HISTORY_KEEP + 3):
        history.publish(folder, "home", home(theme, f"版本 {i}"), theme=theme, by="owner")
    found = history.versions(folder, "home")
    assert len(found) == history.HISTORY_KEEP
    assert len(list(history.history_dir(folder, "home").iterdir())) == history.HISTORY_KEEP
    last = history.HISTORY_KEEP + 2
    assert [text_of(history.load_version(folder, "home", v.id)) for v in found[:2]] == [f"版本 {last}",
                                                                                        f"版本 {last - 1}"]
    assert text_of(history.load_version(folder, "home", found[-1].id)) == f"版本 {last - history.HISTORY_KEEP + 1}"
    numbers = [v.number for v in found]
    assert numbers == sorted(numbers, reverse=True)


def test_unknown_or_malformed_versions_are_not_found(folder, theme):
    history.publish(folder, "home", home(theme, "a"), theme=theme, by="owner")
    for bad in ("../../site", "20260101T000000Z-99", "", None, "20260101T000000Z-1/../x"):
        with pytest.raises(KeyError):
            history.load_version(folder, "home", bad)
    with pytest.raises(ValueError):
        history.versions(folder, "../etc")


def test_undo_puts_back_the_drafts_newest_first(folder, theme):
    for text in ("一", "二", "三"):
        history.save_draft(folder, "home", home(theme, text), theme=theme, by="owner")
    assert history.undo_depth(folder, "home") == 3
    assert history.undo(folder, "home") and text_of(history.draft(folder, "home")) == "二"
    assert history.undo(folder, "home") and text_of(history.draft(folder, "home")) == "一"
    assert history.undo(folder, "home") and history.draft(folder, "home") is None  # before the first change
    assert not history.undo(folder, "home")


def test_an_unchanged_or_refused_draft_adds_no_undo_step(folder, theme):
    history.save_draft(folder, "home", home(theme, "一"), theme=theme, by="owner")
    history.save_draft(folder, "home", home(theme, "一"), theme=theme, by="owner")
    bad = home(theme, "坏")
    bad["order"].append("missing")
    with pytest.raises(ConfigError):
        history.save_draft(folder, "home", bad, theme=theme, by="owner")
    assert history.undo_depth(folder, "home") == 1
    assert text_of(history.draft(folder, "home")) == "一"


def test_the_undo_stack_is_capped(folder, theme):
    for i in range(history.UNDO_KEEP + 5):
        history.save_draft(folder, "home", home(theme, f"第 {i} 步"), theme=theme, by="owner")
    assert history.undo_depth(folder, "home") == history.UNDO_KEEP
    assert history.undo(folder, "home")
    assert text_of(history.draft(folder, "home")) == f"第 {history.UNDO_KEEP + 3} 步"


def test_discarding_is_undoable_and_publishing_starts_a_new_stack(folder, theme):
    history.save_draft(folder, "home", home(theme, "草稿"), theme=theme, by="owner")
    assert history.discard_draft(folder, "home", by="owner")
    assert history.draft(folder, "home") is None and not history.discard_draft(folder, "home", by="owner")
    assert history.undo(folder, "home") and text_of(history.draft(folder, "home")) == "草稿"
    history.publish(folder, "home", history.draft(folder, "home"), theme=theme, by="owner")
    assert history.draft(folder, "home") is None
    assert history.undo_depth(folder, "home") == 0


def test_custom_pages_have_their_own_history(folder, theme):
    key = "custom/about-us"
    data = history.theme_default(theme, key)
    history.publish(folder, key, dict(data, title="关于我们"), theme=theme, by="owner")
    assert history.history_dir(folder, key) == folder / "layouts" / "history" / "custom" / "about-us"
    assert [v.by for v in history.versions(folder, key)] == ["owner", history.THEME_DEFAULT]
    assert history.versions(folder, "home") == []

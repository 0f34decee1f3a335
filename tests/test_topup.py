import json

import pytest

from kamengsite.topup import parse_fields, collect

PHONE = {"name": "phone", "label": "充值手机号", "pattern": r"1\d{10}", "help": "11 位手机号"}
SERVER = {"name": "server", "label": "区服", "choices": ["电信一区", "网通一区"]}


def test_fields_parse_from_json_text_and_lists():
    fields = parse_fields(json.dumps([PHONE, SERVER], ensure_ascii=False))
    assert [f.name for f in fields] == ["phone", "server"]
    assert parse_fields([PHONE])[0].pattern == r"1\d{10}"
    assert parse_fields("") == [] and parse_fields(None) == []


@pytest.mark.parametrize("bad, where", [
    ([{"label": "x"}], "topup_fields[0]"),
    ([{"name": "Phone!", "label": "x"}], "topup_fields[0].name"),
    ([{"name": "a", "label": "x", "pattern": "("}], "topup_fields[0].pattern"),
    ([{"name": "a", "label": "x", "max_length": 5000}], "topup_fields[0].max_length"),
    ([{"name": "a", "label": "x"}, {"name": "a", "label": "y"}], "unique"),
    ([{"name": "a", "label": "x", "colour": "red"}], "topup_fields[0]"),
])
def test_bad_field_definitions_say_which_entry(bad, where):
    with pytest.raises(ValueError, match=__import__("re").escape(where)):
        parse_fields(bad)


def test_values_are_checked_against_pattern_choices_and_length():
    fields = parse_fields([PHONE, SERVER, {"name": "note", "label": "备注", "max_length": 3}])
    values, errors = collect(fields, {"topup_phone": " 13800138000 ", "topup_server": "电信一区", "topup_note": "abc"})
    assert errors == {} and values == {"phone": "13800138000", "server": "电信一区", "note": "abc"}
    _, errors = collect(fields, {"topup_phone": "138", "topup_server": "火星区", "topup_note": "abcd"})
    assert set(errors) == {"phone", "server", "note"}
    # Outside a request the messages are the English source text (a buyer sees the Chinese on the page).
    assert "not in the right format" in errors["phone"] and "11 位手机号" in errors["phone"]
    _, errors = collect(fields, {})
    assert errors["phone"] == "Please fill in 充值手机号"
    # The pattern must match the whole value, not a part of it.
    _, errors = collect(fields[:1], {"topup_phone": "x13800138000x"})
    assert "phone" in errors


def test_a_buyer_reads_the_messages_in_the_page_language():
    from flask import Flask
    from flask_babel import force_locale

    from kamengsite import i18n

    app = Flask(__name__)
    i18n.install(app)
    fields = parse_fields([PHONE])
    with app.test_request_context("/"):
        with force_locale("zh_CN"):
            assert collect(fields, {})[1] == {"phone": "请填写充值手机号"}
            assert collect(fields, {"topup_phone": "138"})[1] == {"phone": "充值手机号格式不正确（11 位手机号）"}
        with force_locale("en"):
            assert collect(fields, {})[1] == {"phone": "Please fill in 充值手机号"}
            assert collect(fields, {"topup_phone": "138"})[1] == {
                "phone": "充值手机号 is not in the right format (11 位手机号)"}

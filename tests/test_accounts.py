"""Console accounts: scrypt hashes, the `kamengsite account` commands, the demo's operator."""

from __future__ import annotations

import base64
import hmac
import re

import pytest

from kamengsite import accounts
from kamengsite.accounts import (Account, AccountError, authenticate, create_account, find_account, hash_password,
                                 set_password, verify_password)
from kamengsite.db import init_database, release_connections
from kamengsite.instance import Instance
from kamengsite.models import Site
from kamengsite.tenancy import CrossTenantError, all_sites, site_scope

PASSWORD = "correct horse battery staple"


@pytest.fixture
def sites(host):
    host.registry.create("shop1", template="gaming")
    return Site.get(Site.slug == "main").id, Site.get(Site.slug == "shop1").id


# -- hashing ----------------------------------------------------------------------------


def test_hash_is_scrypt_with_a_random_salt():
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    scheme, n, r, p, salt, digest = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert first != second  # a fresh salt each time
    assert PASSWORD not in first


def test_verify_accepts_the_password_and_nothing_else():
    stored = hash_password(PASSWORD)
    assert verify_password(PASSWORD, stored)
    for wrong in ("", PASSWORD.upper(), PASSWORD + " ", PASSWORD[:-1]):
        assert not verify_password(wrong, stored), wrong


@pytest.mark.parametrize("stored", ["", "plain", "md5$1$2$3$c2FsdA==$aGFzaA==", "scrypt$x$8$1$c2FsdA==$aGFzaA==",
                                    "scrypt$16384$8$1$!!$aGFzaA==", f"scrypt${2**30}$8$1$c2FsdA==$aGFzaA==",
                                    "scrypt$16384$8$1$c2FsdA==$"])
def test_malformed_or_tampered_hashes_never_verify(stored):
    assert verify_password(PASSWORD, stored) is False


def test_verify_compares_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(accounts.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    stored = hash_password(PASSWORD)
    assert verify_password(PASSWORD, stored) and not verify_password("nope", stored)
    assert len(calls) == 2


def test_unknown_users_cost_a_hash_too(sites, monkeypatch):
    main, _ = sites
    create_account(main, "boss", PASSWORD)
    hashed = []
    real = accounts._scrypt
    monkeypatch.setattr(accounts, "_scrypt", lambda *a: hashed.append(1) or real(*a))
    accounts._dummy_hash()  # computed once per process, not per attempt
    hashed.clear()
    assert authenticate(main, "nobody", PASSWORD) is None
    assert authenticate(main, "boss", "wrong password") is None
    assert len(hashed) == 2


# -- accounts -------------------------------------------------------------------------------


def test_usernames_are_unique_per_site_not_across_sites(sites):
    main, shop = sites
    create_account(main, "Boss", PASSWORD)
    with pytest.raises(AccountError, match="already exists"):
        create_account(main, "boss", PASSWORD)
    other = create_account(shop, "boss", PASSWORD)
    assert other.site_id == shop
    assert authenticate(main, "BOSS", PASSWORD).site_id == main
    with all_sites():
        assert Account.select().count() == 2


def test_accounts_are_tenant_rows(sites):
    main, shop = sites
    create_account(main, "boss", PASSWORD)
    with pytest.raises(CrossTenantError):
        Account.select().count()
    with site_scope(shop):
        assert Account.select().count() == 0
    assert find_account(shop, "boss") is None
    assert authenticate(shop, "boss", PASSWORD) is None


@pytest.mark.parametrize("username, password, message", [
    ("a", PASSWORD, "invalid username"), ("has space", PASSWORD, "invalid username"),
    ("x" * 33, PASSWORD, "invalid username"), ("boss", "short", "too short"),
    ("boss", " padded password ", "whitespace"),
])
def test_bad_usernames_and_weak_passwords_are_refused(sites, username, password, message):
    with pytest.raises(AccountError, match=message):
        create_account(sites[0], username, password)
    with all_sites():
        assert Account.select().count() == 0


def test_set_password_replaces_the_old_one_and_bumps_the_session_version(sites):
    main, _ = sites
    account = create_account(main, "boss", PASSWORD)
    changed = set_password(main, "boss", "a brand new password")
    assert changed.session_version == account.session_version + 1
    assert authenticate(main, "boss", PASSWORD) is None
    assert authenticate(main, "boss", "a brand new password") is not None
    with pytest.raises(AccountError, match="no account"):
        set_password(main, "ghost", "a brand new password")


def test_repr_never_shows_the_hash(sites):
    account = create_account(sites[0], "boss", PASSWORD)
    assert account.password_hash.split("$")[-1] not in repr(account)


# -- the command line -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _close_database():
    yield
    release_connections()


def run(cli, *args, input=None):
    from kamengsite.cli import main

    return cli.runner.invoke(main, ["--instance", str(cli.instance_path), *args], input=input)


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def main_site_of(cli) -> int:
    instance = Instance.load(cli.instance_path)
    init_database(instance.database_url)
    return Site.get(Site.slug == instance.main_site).id


def test_account_create_prints_a_generated_password(cli):
    ok(run(cli, "init"))
    out = ok(run(cli, "account", "create", "Alice"))
    assert "created operator 'alice'" in out
    password = re.search(r"^password: (\S+)$", out, re.M).group(1)
    assert len(password) >= 20
    main = main_site_of(cli)
    account = authenticate(main, "alice", password)
    assert account is not None and account.role == "operator"
    second = ok(run(cli, "account", "create", "bob"))
    assert re.search(r"^password: (\S+)$", second, re.M).group(1) != password  # never a fixed default


def test_account_create_reads_the_password_from_stdin(cli):
    ok(run(cli, "init"))
    out = ok(run(cli, "account", "create", "alice", "--password-stdin", input="my own long password\n"))
    assert "my own long password" not in out and "password:" not in out
    assert authenticate(main_site_of(cli), "alice", "my own long password") is not None


def test_account_create_refuses_duplicates_and_weak_passwords_cleanly(cli):
    ok(run(cli, "init"))
    ok(run(cli, "account", "create", "alice"))
    duplicate = run(cli, "account", "create", "ALICE")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr and "Traceback" not in duplicate.output
    weak = run(cli, "account", "create", "bob", "--password-stdin", input="short\n")
    assert weak.exit_code == 1 and "too short" in weak.stderr
    empty = run(cli, "account", "create", "carol", "--password-stdin", input="")
    assert empty.exit_code == 1 and "no password" in empty.stderr
    main = main_site_of(cli)
    assert find_account(main, "bob") is None and find_account(main, "carol") is None


def test_account_set_password(cli):
    ok(run(cli, "init"))
    ok(run(cli, "account", "create", "alice", "--password-stdin", input="the first password\n"))
    out = ok(run(cli, "account", "set-password", "alice"))
    new = re.search(r"^password: (\S+)$", out, re.M).group(1)
    main = main_site_of(cli)
    assert authenticate(main, "alice", "the first password") is None
    assert authenticate(main, "alice", new) is not None
    ok(run(cli, "account", "set-password", "alice", "--password-stdin", input="the third password\n"))
    assert authenticate(main, "alice", "the third password") is not None
    missing = run(cli, "account", "set-password", "nobody")
    assert missing.exit_code == 1 and "no account 'nobody'" in missing.stderr


def test_account_create_for_a_sub_site_owner(cli):
    ok(run(cli, "init"))
    ok(run(cli, "site", "new", "shop9", "--template", "shop"))
    out = ok(run(cli, "account", "create", "owner", "--site", "shop9", "--password-stdin",
                 input="the owner's password\n"))
    assert "on site 'shop9'" in out and "http://shop9." in out
    main = main_site_of(cli)  # binds the database
    assert authenticate(Site.get(Site.slug == "shop9").id, "owner", "the owner's password") is not None
    assert authenticate(main, "owner", "the owner's password") is None  # another site's account
    missing = run(cli, "account", "create", "x", "--site", "nosuch")
    assert missing.exit_code == 1 and "site 'nosuch' not found" in missing.stderr


def test_account_commands_need_an_initialised_instance(cli):
    result = run(cli, "account", "create", "alice")
    assert result.exit_code == 1 and "kamengsite init" in result.stderr


# -- the demo --------------------------------------------------------------------------------


def test_demo_creates_the_admin_operator_once(instance):
    from kamengsite.demo import setup_demo

    first = list(setup_demo(instance))
    [line] = [line for line in first if line.startswith("operator account: admin")]
    password = re.search(r"password: (\S+)", line).group(1)
    assert len(password) >= 20
    assert any("/admin/" in line for line in first)
    main = Site.get(Site.slug == instance.main_site).id
    assert authenticate(main, "admin", password) is not None

    second = list(setup_demo(instance))
    assert not any(password in line for line in second)
    assert any("'admin' already present" in line for line in second)
    assert authenticate(main, "admin", password) is not None  # unchanged by the second run
    with all_sites():  # one on the main site and one per demo sub-site (its owner), each created once
        assert Account.select().where(Account.username == "admin").count() == 3
    owners = [line for line in first if line.startswith(("shop1 owner account: admin", "shop2 owner account: admin"))]
    shop1_password = re.search(r"password: (\S+)", owners[0]).group(1)
    assert authenticate(Site.get(Site.slug == "shop1").id, "admin", shop1_password) is not None
    assert authenticate(main, "admin", shop1_password) is None


def test_demo_passwords_differ_between_instances(tmp_path):
    from conftest import make_instance
    from kamengsite.demo import setup_demo

    passwords = []
    for name in ("one", "two"):
        instance = make_instance(tmp_path / name, f"sqlite:///{tmp_path / f'{name}.db'}")
        line = next(line for line in setup_demo(instance) if line.startswith("operator account: admin"))
        passwords.append(re.search(r"password: (\S+)", line).group(1))
    assert passwords[0] != passwords[1]

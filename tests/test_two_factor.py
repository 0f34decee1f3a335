"""Two-step console login (TOTP, kamengsite/account_security.py, kamengsite/admin_account.py)."""

from __future__ import annotations

import re

import pyotp
import pytest

from kamengsite import account_security as security
from kamengsite.accounts import create_account, find_account
from kamengsite.models import Site
from kamengsite.tenancy import all_sites
from kamengsite.testing import form_errors as errors, csrf_token

PASSWORD = "correct horse battery staple"
MAIN = "main.localhost"


def text(response) -> str:
    return response.get_data(as_text=True)



class Clock:
    """The TOTP time step the server sees; tests move it by hand."""

    def __init__(self, monkeypatch, step=60_000_000):
        self.step = step
        monkeypatch.setattr(security, "_step", lambda now=None: self.step)

    def code(self, secret, offset=0):
        return pyotp.TOTP(secret).at((self.step + offset) * security.TOTP_INTERVAL)


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


@pytest.fixture
def main_site(host):
    return Site.get(Site.slug == "main")


@pytest.fixture
def operator(main_site):
    return create_account(main_site.id, "boss", PASSWORD)


def password_step(client, username="boss", password=PASSWORD):
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"csrf_token": csrf_token(page), "username": username,
                                             "password": password})


def code_step(client, code):
    page = client.get("/admin/login/code")
    return client.post("/admin/login/code", data={"csrf_token": csrf_token(page), "code": code})


@pytest.fixture
def console(client_for, operator):
    client = client_for(MAIN)
    assert password_step(client).status_code == 302
    return client


def start_setup(console) -> str:
    page = console.get("/admin/account")
    response = console.post("/admin/account/2fa/start", data={"csrf_token": csrf_token(page)})
    assert response.headers["Location"] == "/admin/account/2fa/setup"
    setup = console.get("/admin/account/2fa/setup")
    assert "<svg" in text(setup)
    return re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', text(setup)).group(1)


def enable(console, clock) -> tuple[str, list[str]]:
    secret = start_setup(console)
    page = console.get("/admin/account/2fa/setup")
    response = console.post("/admin/account/2fa/setup", data={"csrf_token": csrf_token(page),
                                                              "code": clock.code(secret)})
    assert response.status_code == 200
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", text(response))
    return secret, codes


def test_enabling_needs_the_right_code(console, clock, operator, main_site):
    secret = start_setup(console)
    page = console.get("/admin/account/2fa/setup")
    wrong = str((int(clock.code(secret)) + 1) % 1_000_000).zfill(6)
    response = console.post("/admin/account/2fa/setup", data={"csrf_token": csrf_token(page), "code": wrong})
    assert "验证码不正确，请检查手机时间后重试" in errors(response)
    assert not security.two_factor_enabled(main_site.id, operator.id)
    response = console.post("/admin/account/2fa/setup", data={"csrf_token": csrf_token(page),
                                                              "code": clock.code(secret)})
    assert security.two_factor_enabled(main_site.id, operator.id)
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", text(response))
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "两步验证已开启" in text(response)
    assert "已开启" in text(console.get("/admin/account"))


def test_the_secret_and_recovery_codes_are_not_stored_in_plaintext(console, clock, operator, main_site, host):
    secret, codes = enable(console, clock)
    with all_sites():
        stored = bytes(security.AccountTotp.get(security.AccountTotp.account == operator.id).secret)
        digests = [row.digest for row in security.RecoveryCode.select()]
    assert secret.encode() not in stored and secret.lower().encode() not in stored
    assert security.TotpCipher.from_instance(host.instance).open(stored, operator.id) == secret
    # Sealed for this account: the same bytes on another account's row do not open.
    with pytest.raises(security.SecurityError):
        security.TotpCipher.from_instance(host.instance).open(stored, operator.id + 1)
    assert len(digests) == 10
    for code in codes:
        assert all(code not in d and code.replace("-", "") not in d for d in digests)


def test_login_needs_the_code_and_a_code_is_not_replayed(console, clock, client_for):
    secret, _ = enable(console, clock)
    client = client_for(MAIN)
    response = password_step(client)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/login/code"
    assert client.get("/admin/").status_code == 302  # the password alone does not sign in
    assert "验证码不正确或已使用" in errors(code_step(client, "000000" if clock.code(secret) != "000000" else "111111"))
    clock.step += 1
    code = clock.code(secret)
    assert code_step(client, code).status_code == 302
    assert client.get("/admin/").status_code == 200
    # The same code again (same window), in another browser: refused.
    other = client_for(MAIN)
    assert password_step(other).status_code == 302
    assert "验证码不正确或已使用" in errors(code_step(other, code))
    # An older code of the window is refused too: the step only moves forward.
    assert "验证码不正确或已使用" in errors(code_step(other, clock.code(secret, -1)))
    clock.step += 1
    assert code_step(other, clock.code(secret)).status_code == 302


def test_a_recovery_code_works_once(console, clock, client_for):
    _, codes = enable(console, clock)
    client = client_for(MAIN)
    password_step(client)
    assert code_step(client, codes[0].upper()).status_code == 302  # typed in capitals: still good
    assert client.get("/admin/").status_code == 200
    other = client_for(MAIN)
    password_step(other)
    assert "验证码不正确或已使用" in errors(code_step(other, codes[0]))
    assert code_step(other, codes[1]).status_code == 302
    assert 'id="codes-left">8<' in text(other.get("/admin/account"))


def test_the_code_step_expires_and_needs_the_password_step(client_for, operator, console, clock, monkeypatch):
    secret, _ = enable(console, clock)
    client = client_for(MAIN)
    assert client.get("/admin/login/code").headers["Location"] == "/admin/login"  # no password step yet
    password_step(client)
    import time

    from kamengsite import admin

    now = time.time()
    monkeypatch.setattr(admin, "_now", lambda: now + 301)
    clock.step += 1
    page = client.get("/admin/login/code")
    assert page.status_code == 302 and page.headers["Location"] == "/admin/login"


def test_disabling_needs_a_current_code(console, clock, operator, main_site):
    secret, _ = enable(console, clock)
    page = console.get("/admin/account")
    console.post("/admin/account/2fa/disable", data={"csrf_token": csrf_token(page), "code": "12345"})
    assert security.two_factor_enabled(main_site.id, operator.id)
    console.post("/admin/account/2fa/disable", data={"csrf_token": csrf_token(page), "code": clock.code(secret)})
    assert security.two_factor_enabled(main_site.id, operator.id)  # the code that enabled it: already used
    clock.step += 1
    console.post("/admin/account/2fa/disable", data={"csrf_token": csrf_token(page), "code": clock.code(secret)})
    assert not security.two_factor_enabled(main_site.id, operator.id)
    with all_sites():
        assert not security.RecoveryCode.select().exists()


def test_regenerating_recovery_codes_voids_the_old_ones(console, clock, client_for):
    secret, old = enable(console, clock)
    clock.step += 1
    page = console.get("/admin/account")
    response = console.post("/admin/account/recovery-codes", data={"csrf_token": csrf_token(page),
                                                                   "code": clock.code(secret)})
    new = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", text(response))
    assert len(new) == 10 and not set(new) & set(old)
    client = client_for(MAIN)
    password_step(client)
    assert "验证码不正确或已使用" in errors(code_step(client, old[0]))
    assert code_step(client, new[0]).status_code == 302


def test_every_new_post_needs_the_csrf_token(console, clock):
    secret = start_setup(console)
    for path in ("/admin/account/2fa/start", "/admin/account/2fa/setup", "/admin/account/2fa/disable",
                 "/admin/account/recovery-codes", "/admin/account/sessions/end-others",
                 "/admin/account/sessions/x/end", "/admin/account/password"):
        response = console.post(path, data={"code": clock.code(secret), "current": PASSWORD, "new": "n" * 12,
                                            "again": "n" * 12})
        assert response.status_code == 400, path
    assert console.get("/admin/account").status_code == 200  # still signed in, nothing changed


def test_the_code_step_needs_the_csrf_token(console, clock, client_for):
    secret, _ = enable(console, clock)
    client = client_for(MAIN)
    password_step(client)
    clock.step += 1
    assert client.post("/admin/login/code", data={"code": clock.code(secret)}).status_code == 400
    assert client.get("/admin/").status_code == 302


def test_reset_2fa_from_the_command_line(cli, tmp_path):
    assert cli("init", "--base-domain", "example.test").exit_code == 0
    result = cli("account", "create", "boss")
    assert result.exit_code == 0, result.output
    from kamengsite.instance import Instance

    instance = Instance.load(cli.instance_path)
    with _bound(instance):
        site_id = Site.get(Site.slug == instance.main_site).id
        account = find_account(site_id, "boss")
        cipher = security.TotpCipher.from_instance(instance)
        security.begin_setup(site_id, account, cipher)
        secret = security.pending_secret(site_id, account.id, cipher)
        security.confirm_setup(site_id, account.id, pyotp.TOTP(secret).now(), cipher)
        assert security.two_factor_enabled(site_id, account.id)
    result = cli("account", "reset-2fa", "boss")
    assert result.exit_code == 0, result.output
    assert "two-step login of 'boss' is off" in result.output
    with _bound(instance):
        assert not security.two_factor_enabled(site_id, account.id)
    result = cli("account", "reset-2fa", "nobody")
    assert result.exit_code != 0 and "no account 'nobody'" in result.output


def _bound(instance):
    from kamengsite.cli import bound_database

    return bound_database(instance)


def test_site_isolation_of_the_code_step(host, client_for, console, clock):
    """A pending code step of site A means nothing on site B; B's account page is B's account only."""
    host.registry.create("shop1", template="gaming")
    create_account(Site.get(Site.slug == "shop1").id, "owner", PASSWORD)
    secret, _ = enable(console, clock)
    client = client_for(MAIN)
    password_step(client)
    cookie = client.get_cookie("ks_session", domain=MAIN).value
    shop = client_for("shop1.localhost")
    shop.set_cookie("ks_session", domain="shop1.localhost", value=cookie)
    clock.step += 1
    assert shop.get("/admin/login/code").headers["Location"] == "/admin/login"
    owner = client_for("shop1.localhost")
    assert password_step(owner, "owner").status_code == 302
    page = text(owner.get("/admin/account"))
    assert "owner" in page and "boss" not in page and "未开启" in page


def test_account_security_and_the_code_step_in_english(console, clock, client_for):
    zh = text(console.get("/admin/account"))
    assert "<h1>账号安全 · boss</h1>" in zh and "开启两步验证" in zh
    en = text(console.get("/admin/account?lang=en"))
    assert "<h1>Account security · boss</h1>" in en and "Turn on two-step verification" in en
    assert "Sign-in sessions" in en and "Change password" in en and "This session" in en
    for chinese in ("账号安全", "开启两步验证", "登录会话", "修改密码", "当前会话", "未开启"):
        assert chinese not in en
    secret = start_setup(console)
    setup = console.get("/admin/account/2fa/setup")
    assert "If you cannot scan it, type this key into the app: <code" in text(setup) and "扫描" not in text(setup)
    wrong = "000000" if clock.code(secret) != "000000" else "111111"
    response = console.post("/admin/account/2fa/setup", data={"csrf_token": csrf_token(setup), "code": wrong})
    assert "Wrong code: check the time on your phone and try again" in errors(response)

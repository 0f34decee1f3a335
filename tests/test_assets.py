"""Uploaded images for theme and section ``image`` settings (kamengsite/assets.py, /admin/theme/images).

An upload is checked by its bytes (PNG, JPEG, WebP, GIF only), size and pixel count, encoded
anew without metadata, stored once per content in ``sites/<slug>/assets/`` and served by the
site that owns it only. The console endpoints need this site's console session and a CSRF token.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from kamengsite import assets, layouts
from kamengsite.accounts import create_account
from kamengsite.errors import ConfigError
from kamengsite.testing import SiteClient, csrf_token, sign_in_console, site_id

PASSWORD = "correct horse battery staple"
ASSET_URL_RE = re.compile(r"^/assets/[0-9a-f]{16}\.(png|jpg|webp|gif)$")


# -- images made for the tests ------------------------------------------------------------------------


def png_bytes(size=(40, 30), mode="RGBA", color=(255, 0, 0, 128), text=None) -> bytes:
    out = io.BytesIO()
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", text)
    Image.new(mode, size, color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def jpeg_with_exif(size=(60, 20)) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCamMaker"  # Make
    exif[0x0110] = "SecretModel"  # Model
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to show
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="JPEG", exif=exif.tobytes(), comment=b"SecretComment")
    return out.getvalue()


def webp_with_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SecretCamMaker"
    out = io.BytesIO()
    Image.new("RGBA", (32, 32), (0, 0, 255, 200)).save(out, format="WEBP", exif=exif.tobytes(), quality=80)
    return out.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("P", (20, 20), i) for i in (1, 2, 3)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0,
                   comment=b"SecretComment")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` (a decompression bomb's header) with one tiny IDAT."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def stored(folder) -> list[str]:
    root = folder / "assets"
    return sorted(p.name for p in root.iterdir() if p.name != ".keep") if root.is_dir() else []


# -- store_image ----------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "site"
    path.mkdir()
    return path


@pytest.mark.parametrize("data, fmt, ext", [
    (png_bytes(text="SecretComment"), "PNG", "png"),
    (jpeg_with_exif(), "JPEG", "jpg"),
    (webp_with_exif(), "WEBP", "webp"),
    (animated_gif(), "GIF", "gif"),
])
def test_each_format_is_accepted_and_encoded_without_metadata(folder, data, fmt, ext):
    url = assets.store_image(folder, data, "whatever.bin")  # the name says nothing: the bytes decide
    assert ASSET_URL_RE.match(url) and url.endswith("." + ext)
    name = url.rsplit("/", 1)[1]
    raw = (folder / "assets" / name).read_bytes()
    assert raw != data  # encoded anew
    for secret in (b"SecretCamMaker", b"SecretModel", b"SecretComment"):
        assert secret not in raw
    image = Image.open(io.BytesIO(raw))
    assert image.format == fmt
    assert len(image.getexif()) == 0
    assert not {"exif", "comment", "Comment", "icc_profile", "xmp"} & set(image.info)
    assert getattr(image, "n_frames", 1) == 1  # an animation keeps its first frame
    assert stored(folder) == [name]


def test_exif_orientation_is_applied_before_it_is_dropped(folder):
    url = assets.store_image(folder, jpeg_with_exif(size=(60, 20)), "photo.jpg")
    image = Image.open(folder / "assets" / url.rsplit("/", 1)[1])
    assert image.size == (20, 60)  # Orientation 6: shown upright, as the camera meant


def test_transparency_is_kept(folder):
    url = assets.store_image(folder, png_bytes(color=(255, 0, 0, 128)), "a.png")
    image = Image.open(folder / "assets" / url.rsplit("/", 1)[1])
    assert image.mode == "RGBA" and image.getpixel((0, 0)) == (255, 0, 0, 128)


@pytest.mark.parametrize("data, filename", [
    (b"hello, this is text", "notes.txt"),
    (b"<!doctype html><script>alert(1)</script>", "evil.png"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="9" height="9"/></svg>', "logo.svg"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "x.eps"),
    (png_bytes()[:60], "truncated.png"),
])
def test_what_is_not_an_image_is_refused(folder, data, filename):
    with pytest.raises(ConfigError) as refused:
        assets.store_image(folder, data, filename)
    # Outside a request the reason is the English source text; the console shows it translated.
    assert "Not an image" in refused.value.reason or "damaged" in refused.value.reason
    assert stored(folder) == []


def test_too_many_bytes_or_pixels_are_refused(folder):
    with pytest.raises(ConfigError) as refused:
        assets.store_image(folder, b"\x89PNG" + b"\0" * assets.MAX_BYTES, "big.png")
    assert "File too large" in refused.value.reason and "5.0 MB" in refused.value.reason
    with pytest.raises(ConfigError) as refused:
        assets.store_image(folder, png_bytes(size=(4097, 8), mode="L", color=0), "wide.png")
    assert "4097×8" in refused.value.reason and "4096" in refused.value.reason
    with pytest.raises(ConfigError) as refused:  # 30000×30000 claimed in 60 bytes: Pillow's bomb guard
        assets.store_image(folder, png_header_only(30000, 30000), "bomb.png")
    assert "pixels" in refused.value.reason
    with pytest.raises(ConfigError) as refused:
        assets.store_image(folder, b"", "empty.png")
    assert "empty" in refused.value.reason
    assert stored(folder) == []
    assert ASSET_URL_RE.match(assets.store_image(folder, png_bytes(size=(4096, 4), mode="L", color=0), "ok.png"))


def test_the_same_image_twice_is_one_file(folder):
    data = png_bytes(size=(10, 10))
    first = assets.store_image(folder, data, "a.png")
    assert assets.store_image(folder, data, "b.png") == first
    assert stored(folder) == [first.rsplit("/", 1)[1]]
    other = assets.store_image(folder, png_bytes(size=(11, 10)), "c.png")
    assert other != first and len(stored(folder)) == 2
    assert [i["url"] for i in assets.list_images(folder)][0] in (first, other)
    assert {i["url"] for i in assets.list_images(folder)} == {first, other}


def test_delete_refuses_names_not_of_ours(folder):
    url = assets.store_image(folder, png_bytes(), "a.png")
    (folder / "site.toml").write_text("x")
    for bad in ("../site.toml", "site.toml", ".keep", url.rsplit("/", 1)[1].upper(), "0123456789abcdef.svg"):
        with pytest.raises(ConfigError):
            assets.delete_image(folder, bad)
    assert (folder / "site.toml").exists()
    assert assets.delete_image(folder, url.rsplit("/", 1)[1]) is True
    assert assets.delete_image(folder, url.rsplit("/", 1)[1]) is False
    assert stored(folder) == []


def test_layouts_accept_the_uploaded_url():
    spec = {"type": "image", "id": "image"}
    assert layouts.clean_value(spec, "/assets/0123456789abcdef.png") == "/assets/0123456789abcdef.png"


# -- the console endpoints and the storefront ---------------------------------------------------------


class Owner:
    def __init__(self, host, slug, username):
        self.host, self.slug = host, slug
        self.client = sign_in_console(SiteClient(host, f"{slug}.localhost"), username, PASSWORD)
        self.folder = host.registry.folder(slug)
        page = self.client.get("/admin/theme/")
        html = page.get_data(as_text=True)
        self.csrf = re.search(r'data-csrf="([^"]+)"', html).group(1)
        self.form_token = csrf_token(page)
        self.images_url = re.search(r'data-images="([^"]+)"', html).group(1)

    def upload(self, data, filename="a.png", token=None, client=None):
        return (client or self.client).post(
            "/admin/theme/images", data={"image": (io.BytesIO(data), filename)},
            headers={"X-CSRFToken": self.csrf if token is None else token, "Accept": "application/json"})


@pytest.fixture
def owner(host):
    host.registry.create("shop1", template="gaming")
    create_account(site_id("shop1"), "owner", PASSWORD)
    return Owner(host, "shop1", "owner")


def test_owner_uploads_and_the_site_serves_it(owner, client_for):
    assert owner.images_url == "/admin/theme/images"
    answer = owner.upload(jpeg_with_exif(), "photo.jpg")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    url = answer.get_json()["url"]
    assert ASSET_URL_RE.match(url) and stored(owner.folder) == [url.rsplit("/", 1)[1]]

    visitor = client_for("shop1.localhost")
    served = visitor.get(url)
    assert served.status_code == 200 and served.mimetype == "image/jpeg"
    assert served.data == (owner.folder / "assets" / url.rsplit("/", 1)[1]).read_bytes()
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert served.headers["Content-Security-Policy"] == "default-src 'none'"
    assert "Set-Cookie" not in served.headers

    listed = owner.client.get("/admin/theme/images").get_json()["images"]
    assert [(i["url"], i["used"]) for i in listed] == [(url, [])]

    # The form token works as well as the header; a multipart form from the theme-settings page, say.
    other = owner.client.post("/admin/theme/images", headers={"Accept": "application/json"},
                              data={"csrf_token": owner.form_token, "image": (io.BytesIO(png_bytes()), "b.png")})
    assert other.status_code == 200 and other.get_json()["url"].endswith(".png")


def test_refused_uploads_say_why_and_write_nothing(owner):
    for data, filename, words in [
        (b"<html>not an image</html>", "fake.png", "不是图片"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "a.svg", "不是图片"),
        (png_bytes(size=(5000, 5000), mode="1", color=0), "huge.png", "4096"),
    ]:
        answer = owner.upload(data, filename)
        assert answer.status_code == 400 and words in answer.get_json()["error"], answer.get_data(as_text=True)
    too_big = owner.upload(b"\0" * (assets.MAX_BYTES + assets.FORM_OVERHEAD + 10), "big.png")
    assert too_big.status_code == 413 and "5 MB" in too_big.get_json()["error"]
    just_over = owner.upload(b"\0" * (assets.MAX_BYTES + 1), "big.png")
    assert just_over.status_code == 400 and "文件太大" in just_over.get_json()["error"]
    no_file = owner.client.post("/admin/theme/images", data={}, headers={"X-CSRFToken": owner.csrf})
    assert no_file.status_code == 400 and "请选择" in no_file.get_json()["error"]
    assert stored(owner.folder) == []


def test_only_the_sites_console_may_upload_or_delete(host, owner, client_for):
    data = png_bytes()
    # Signed in, but no token or a wrong one.
    assert owner.upload(data, token="").status_code == 400
    assert owner.upload(data, token="wrong").status_code == 400
    # Anonymous, with a valid token of its own session.
    anonymous = client_for("shop1.localhost")
    token = csrf_token(anonymous.get("/lookup"))
    assert owner.upload(data, token=token, client=anonymous).status_code == 401
    assert anonymous.get("/admin/theme/images").status_code == 401
    # The owner of another site, with that site's session cookie and token sent to shop1.
    host.registry.create("shop2", template="shop")
    create_account(site_id("shop2"), "owner2", PASSWORD)
    other = Owner(host, "shop2", "owner2")
    cookie = other.client.get_cookie("ks_session", domain="shop2.localhost").value
    intruder = client_for("shop1.localhost")
    intruder.set_cookie("ks_session", cookie, domain="shop1.localhost")
    assert other.upload(data, token=other.csrf, client=intruder).status_code in (400, 401)
    assert intruder.get("/admin/theme/images").status_code == 401
    assert stored(owner.folder) == []

    url = owner.upload(data).get_json()["url"]
    name = url.rsplit("/", 1)[1]
    for client, token in ((anonymous, token), (intruder, other.csrf), (owner.client, "wrong")):
        answer = client.post(f"/admin/theme/images/{name}/delete", headers={"X-CSRFToken": token})
        assert answer.status_code in (400, 401)
    assert stored(owner.folder) == [name]
    assert owner.client.post("/admin/theme/images/..%2Fsite.toml/delete",
                             headers={"X-CSRFToken": owner.csrf}).status_code == 404
    assert owner.client.post(f"/admin/theme/images/{name}/delete",
                             headers={"X-CSRFToken": owner.csrf}).get_json() == {"ok": True}
    assert stored(owner.folder) == []


def test_one_sites_images_are_not_served_by_another(host, owner, client_for):
    url = owner.upload(png_bytes()).get_json()["url"]
    host.registry.create("shop2", template="shop")
    assert client_for("shop1.localhost").get(url).status_code == 200
    assert client_for("shop2.localhost").get(url).status_code == 404
    assert client_for("main.localhost").get(url).status_code == 404
    shop1 = client_for("shop1.localhost")
    for path in ("/assets/..%2Fsite.toml", "/assets/../site.toml", "/assets/%2e%2e/site.toml", "/assets/.keep",
                 "/assets/" + url.rsplit("/", 1)[1].replace(".png", ".svg"), "/assets/site.toml",
                 "/assets/0123456789abcdef.png"):
        answer = shop1.get(path)
        assert answer.status_code == 404, path
        assert b"[site]" not in answer.data and b"slug" not in answer.data


def test_an_uploaded_image_in_a_banner_is_shown_and_cannot_be_deleted_while_used(owner, client_for):
    url = owner.upload(png_bytes(size=(300, 100), mode="RGB", color=(0, 128, 255))).get_json()["url"]
    name = url.rsplit("/", 1)[1]
    page = owner.client.get("/admin/theme/?page=home").get_data(as_text=True)
    state = json.loads(re.search(r'<script type="application/json" id="editor-state">(.*?)</script>',
                                 page, re.S).group(1))
    layout = state["layout"]
    layout["sections"]["banner_1"] = {"type": "image_banner", "settings": {"image": url, "alt": "新品上架"}}
    layout["order"].insert(0, "banner_1")
    layout["sections"]["hero"]["settings"]["image"] = url
    assert owner.client.post("/admin/theme/draft", json={"page": "home", "layout": layout},
                             headers={"X-CSRFToken": owner.csrf}).status_code == 200
    assert owner.client.post("/admin/theme/publish",
                             data={"csrf_token": owner.form_token, "page": "home"}).status_code == 302
    html = client_for("shop1.localhost").get("/").get_data(as_text=True)
    assert f'<img src="{url}" alt="新品上架"' in html
    assert f"url('{url}')" in html  # the hero's background
    assert client_for("shop1.localhost").get(url).status_code == 200

    listed = owner.client.get("/admin/theme/images").get_json()["images"]
    assert listed[0]["used"] == ["layouts/home.json"]
    refused = owner.client.post(f"/admin/theme/images/{name}/delete", headers={"X-CSRFToken": owner.csrf,
                                                                                "Accept": "application/json"})
    assert refused.status_code == 409 and "正在使用" in refused.get_json()["error"]
    assert stored(owner.folder) == [name]


def test_uploads_are_rate_limited(owner):
    owner.host.instance.rate_limits["image-upload"] = "2/minute"
    data = png_bytes()
    assert owner.upload(data).status_code == 200
    assert owner.upload(data).status_code == 200
    assert owner.upload(data).status_code == 429

"""Images the owner uploads for theme and section ``image`` settings (a core plugin, on every site).

Owner content lives in the site folder, never in the theme: an upload is stored as
``sites/<slug>/assets/<sha256 prefix>.<ext>`` and used in settings as the site-relative URL
``/assets/<name>``, which every site app serves from its own folder only (site A's images
are not found on site B).

An upload is trusted for nothing but being an image:

- the format is decided from the bytes by Pillow, limited to PNG, JPEG, WebP and GIF (never
  by the file name; Pillow is told to try only those four decoders, so no other decoder —
  EPS, which runs Ghostscript, above all — ever sees the bytes);
- at most ``MAX_BYTES`` uploaded and ``MAX_SIDE`` pixels a side, checked from the header
  before anything is decoded (Pillow's decompression-bomb guard stays on as well);
- the first frame is decoded and encoded again in the same format: EXIF, XMP, comments and
  text chunks are dropped (the EXIF orientation is applied first, so photos stay upright);
  a colour profile is converted to sRGB and dropped; an animation keeps its first frame only;
- the name is the SHA-256 of the stored bytes, so the same image uploaded twice is one file,
  and a name can be served forever with ``immutable`` caching (a new image is a new name).

Files are written atomically (a temporary file in the same folder, renamed into place).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from pathlib import Path

from flask import Blueprint, abort, request, send_from_directory

from .app import current_site
from .errors import ConfigError
from .hookspecs import hookimpl
from .i18n import _

ASSETS_DIR = "assets"
MAX_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4096
MAX_IMAGES = 300  # per site: a bound on what one owner can store
FORM_OVERHEAD = 64 * 1024  # the multipart envelope and the CSRF token around the file
#: Pillow format → (file extension, mimetype). Nothing else is accepted.
FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp"),
           "GIF": ("gif", "image/gif")}
MIMETYPES = {ext: mime for ext, mime in FORMATS.values()}
NAME_RE = re.compile(r"^[0-9a-f]{16}\.(?:png|jpg|webp|gif)$")
URL_PREFIX = "/assets/"
USED_RE = re.compile(r"/assets/([0-9a-f]{16}\.(?:png|jpg|webp|gif))")
CACHE_FOREVER = "public, max-age=31536000, immutable"
#: The upload endpoint (kamengsite/admin_theme.py) whose request size is capped before the form is read.
UPLOAD_ENDPOINT = "admin_theme.upload_image"


def _refuse(filename, reason: str):
    raise ConfigError(filename or "upload", "image", reason)


def _folder(site_folder) -> Path:
    return Path(site_folder) / ASSETS_DIR


def _mb(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def _decode(data: bytes, filename):
    """The first frame of ``data`` as a loaded Pillow image, and its format; ``ConfigError`` otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError:
        _refuse(filename, _("Too many pixels: width and height may not exceed %(max)s pixels", max=MAX_SIDE))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        _refuse(filename, _("Not an image, or not a supported format (PNG, JPEG, WebP and GIF only)"))
    fmt = image.format
    width, height = image.size
    if fmt not in FORMATS:
        _refuse(filename, _("Not a supported image format (PNG, JPEG, WebP and GIF only)"))
    if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE:
        _refuse(filename, _("Too many pixels: %(width)s×%(height)s; width and height may not exceed %(max)s pixels",
                             width=width, height=height, max=MAX_SIDE))
    try:
        image.seek(0)
        image.load()
        exif = image.getexif()
        icc = image.info.get("icc_profile")
        transparency = image.info.get("transparency")
        if exif.get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        _refuse(filename, _("Too many pixels: width and height may not exceed %(max)s pixels", max=MAX_SIDE))
    except (OSError, ValueError, SyntaxError, EOFError):
        _refuse(filename, _("The image file is damaged or incomplete and cannot be read"))
    return image, fmt, icc, transparency


def _to_srgb(image, icc):
    """Colours as the profile meant them, in sRGB, so the profile itself can be dropped."""
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=mode)
    except Exception:  # noqa: BLE001 - a broken profile: the pixels as they are
        return image


def _encode(image, fmt: str, icc, transparency) -> bytes:
    """``image`` written anew in ``fmt`` with no metadata at all."""
    from PIL import Image

    image = _to_srgb(image, icc)
    out = io.BytesIO()
    options = {}
    if fmt == "JPEG":
        image = image.convert("L" if image.mode in ("1", "L") else "RGB")
        options = {"quality": 90, "optimize": True}
    elif fmt == "PNG":
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            image = image.convert("RGBA")
        options = {"optimize": False}
    elif fmt == "WEBP":
        alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and transparency is not None)
        image = image.convert("RGBA" if alpha else "RGB")
        options = {"quality": 90, "method": 4}
    else:  # GIF: one palette frame
        if image.mode not in ("P", "L"):
            image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    if image.mode in ("P", "L", "RGB") and transparency is not None and fmt in ("PNG", "GIF"):
        options["transparency"] = transparency
    image.info = {}  # EXIF, XMP, ICC, comments, text chunks: none of it is written
    image.save(out, format=fmt, **options)
    return out.getvalue()


def store_image(site_folder, data: bytes, filename=None) -> str:
    """Check and re-encode an uploaded image, store it in the site's ``assets/``; return ``/assets/<name>``.

    ``ConfigError`` (its ``reason`` in the owner's language) if it is empty, too large, not a
    PNG/JPEG/WebP/GIF, has too many pixels, or the site already holds ``MAX_IMAGES``.
    """
    if not data:
        _refuse(filename, _("The file is empty; choose an image"))
    if len(data) > MAX_BYTES:
        _refuse(filename, _("File too large: %(size)s; an image may not exceed %(max)s", size=_mb(len(data)),
                             max=_mb(MAX_BYTES)))
    image, fmt, icc, transparency = _decode(data, filename)
    try:
        encoded = _encode(image, fmt, icc, transparency)
    except (OSError, ValueError) as exc:
        _refuse(filename, _("The image could not be converted (%(error)s)", error=exc))
    ext = FORMATS[fmt][0]
    name = f"{hashlib.sha256(encoded).hexdigest()[:16]}.{ext}"
    folder = _folder(site_folder)
    path = folder / name
    if path.exists():
        os.utime(path)  # the same image again: one file, listed as the newest
        return URL_PREFIX + name
    if len(list_images(site_folder)) >= MAX_IMAGES:
        _refuse(filename, _("%(max)s images uploaded, the limit; delete images you no longer use first",
                             max=MAX_IMAGES))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(encoded)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return URL_PREFIX + name


def list_images(site_folder) -> list[dict]:
    """The site's uploaded images, newest first: ``{"name", "url", "size"}``."""
    folder = _folder(site_folder)
    try:
        entries = [e for e in os.scandir(folder) if e.is_file() and NAME_RE.match(e.name)]
    except FileNotFoundError:
        return []
    entries.sort(key=lambda e: (e.stat().st_mtime_ns, e.name), reverse=True)
    return [{"name": e.name, "url": URL_PREFIX + e.name, "size": e.stat().st_size} for e in entries]


def images_in_use(site_folder) -> dict[str, list[str]]:
    """``{image name: [site-relative files that use it]}`` over published and draft layouts, theme settings
    and the site's logo.

    Layout history and undo steps are not counted: they are old versions, not what is shown.
    """
    root = Path(site_folder)
    files = [root / "theme_settings.json", root / "site.toml"]  # site.toml: the shop's logo
    layouts_dir = root / "layouts"
    if layouts_dir.is_dir():
        files += [p for p in layouts_dir.rglob("*.json")
                  if not ({"history", "undo"} & set(p.relative_to(layouts_dir).parts[:-1]))]
    used: dict[str, list[str]] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            continue
        for name in set(USED_RE.findall(text)):
            used.setdefault(name, []).append(str(path.relative_to(root)))
    return used


def delete_image(site_folder, name: str) -> bool:
    """Delete one uploaded image; False if there is no such file. ``ConfigError`` for a name not of ours."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError("upload", "image", _("Not an image uploaded to this site"))
    try:
        (_folder(site_folder) / name).unlink()
    except FileNotFoundError:
        return False
    return True


# -- serving: GET /assets/<name> on every site app ------------------------------------------------------

bp = Blueprint("assets", __name__)


@bp.get("/assets/<name>")
def serve(name):
    """One uploaded image of *this* site (its own folder), cached forever: a new image is a new name."""
    if not NAME_RE.match(name):
        abort(404)
    folder = _folder(current_site().config.path)
    response = send_from_directory(folder, name, mimetype=MIMETYPES[name.rsplit(".", 1)[1]], max_age=31536000)
    response.headers["Cache-Control"] = CACHE_FOREVER
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'"  # set here: the storefront's is not added
    return response


def _limit_upload():
    """Before anything reads the form (the CSRF check does): an image upload is at most ``MAX_BYTES``."""
    if request.endpoint == UPLOAD_ENDPOINT:
        request.max_content_length = MAX_BYTES + FORM_OVERHEAD


@hookimpl
def prepare_site_app(app, site):
    if app.extensions.get("kamengsite.site") is None:
        return
    app.before_request_funcs.setdefault(None, []).insert(0, _limit_upload)
    app.register_blueprint(bp)

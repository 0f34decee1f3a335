"""The share poster of a product: a PNG with the site, the product, its price and a QR code of the invite link.

Made for WeChat/QQ groups: a tall card (``WIDTH`` × ``HEIGHT``) that reads on a phone.
Chinese text needs a CJK font; the first one found on the machine is used (``CJK_FONTS``,
then ``fc-list :lang=zh``, or the ``KAMENGSITE_CJK_FONT`` environment variable). Without one
the poster still renders: Pillow's default font, and only the text it can draw (ASCII:
the price, the link) next to the QR code, which is what matters.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

import segno
from PIL import Image, ImageDraw, ImageFont

from kamengsite.i18n import _

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 720, 1080
MARGIN = 48
QR_SIZE = 432  # the QR code's square, border included
QR_TOP = 440
QR_BORDER = 2  # quiet-zone modules around the code
QR_ERROR = "m"
BACKGROUND = (255, 255, 255)
BAND = (196, 30, 58)
INK = (33, 33, 33)
PRICE_INK = (196, 30, 58)
MUTED = (110, 110, 110)
FONT_ENV = "KAMENGSITE_CJK_FONT"
#: Where Debian/Ubuntu/Alpine/macOS put the usual CJK fonts (fonts-noto-cjk, fonts-wqy-*).
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
)


@dataclass(frozen=True)
class Fonts:
    cjk: bool  # False: Pillow's default font, ASCII text only
    path: str = ""

    def get(self, size: int):
        if self.path:
            return ImageFont.truetype(self.path, size)
        try:
            return ImageFont.load_default(size)
        except TypeError:  # Pillow < 10.1: one small bitmap font
            return ImageFont.load_default()

    def can_draw(self, text: str) -> bool:
        return self.cjk or text.isascii()


@cache
def find_fonts() -> Fonts:
    """The CJK font of this machine, or the ASCII-only fallback (logged once)."""
    candidates = [os.environ.get(FONT_ENV, ""), *CJK_FONTS, *_fc_list()]
    for path in filter(None, candidates):
        if os.path.isfile(path):
            try:
                ImageFont.truetype(path, 12)
            except OSError:
                continue
            return Fonts(cjk=True, path=path)
    log.warning("no CJK font found (install fonts-noto-cjk or set %s): share posters show ASCII text only", FONT_ENV)
    return Fonts(cjk=False)


def _fc_list() -> list[str]:
    fc_list = shutil.which("fc-list")
    if not fc_list:
        return []
    try:
        out = subprocess.run([fc_list, ":lang=zh", "file"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line.split(":", 1)[0].strip() for line in out.splitlines() if line.strip())


def qr_code(url: str):
    return segno.make(url, error=QR_ERROR, micro=False)


def qr_scale(url: str) -> int:
    """Pixels per module: the largest that fits ``QR_SIZE``."""
    width = qr_code(url).symbol_size(scale=1, border=QR_BORDER)[0]
    return max(1, QR_SIZE // width)


def qr_origin(url: str) -> tuple[int, int]:
    """The top-left pixel of the QR image (border included) on the poster."""
    width = qr_code(url).symbol_size(scale=qr_scale(url), border=QR_BORDER)[0]
    return (WIDTH - width) // 2, QR_TOP


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with …) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def render(site_name: str, product_name: str, price_fen: int, url: str, fonts: Fonts | None = None) -> bytes:
    """The poster as PNG bytes."""
    fonts = fonts or find_fonts()
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    inner = WIDTH - 2 * MARGIN

    draw.rectangle((0, 0, WIDTH, 120), fill=BAND)
    title = fonts.get(44)
    if fonts.can_draw(site_name):
        draw.text((MARGIN, 60), _fit(draw, site_name, title, inner), font=title, fill=BACKGROUND, anchor="lm")

    name_font = fonts.get(40)
    if fonts.can_draw(product_name):
        lines = _wrap(draw, product_name, name_font, inner, 2)
        for i, line in enumerate(lines):
            draw.text((MARGIN, 190 + i * 56), line, font=name_font, fill=INK, anchor="lm")

    price_font = fonts.get(64)
    price = f"¥{yuan(price_fen)}" if fonts.cjk else f"RMB {yuan(price_fen)}"
    draw.text((MARGIN, 350), price, font=price_font, fill=PRICE_INK, anchor="lm")

    qr_image = io.BytesIO()
    qr_code(url).save(qr_image, kind="png", scale=qr_scale(url), border=QR_BORDER)
    qr_image.seek(0)
    with Image.open(qr_image) as qr:
        image.paste(qr.convert("RGB"), qr_origin(url))

    hint = fonts.get(30)
    text_top = QR_TOP + QR_SIZE + 40
    hint_text = _("Press and hold the QR code to buy now")
    if not fonts.can_draw(hint_text):
        hint_text = "Scan the QR code to buy"  # the fallback font has no Chinese
    draw.text((WIDTH // 2, text_top), hint_text, font=hint, fill=INK, anchor="mm")
    small = fonts.get(22)
    draw.text((WIDTH // 2, text_top + 60), _fit(draw, url, small, inner), font=small, fill=MUTED, anchor="mm")

    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Character-wise wrapping (Chinese has no spaces), the last line cut with …"""
    lines, current = [], ""
    for ch in text:
        if draw.textlength(current + ch, font=font) > width and current:
            lines.append(current)
            current = ch
        else:
            current += ch
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [_fit(draw, "".join(lines[max_lines - 1:]), font, width)]
    return lines


def read_qr_matrix(png: bytes, url: str) -> list[list[bool]]:
    """The QR modules drawn on a poster, read back by sampling each module's centre (True: dark).

    For tests and checks: with ``qr_code(url).matrix`` it shows the poster carries that payload.
    """
    with Image.open(io.BytesIO(png)) as image:
        gray = image.convert("L")
        scale = qr_scale(url)
        x0, y0 = qr_origin(url)
        size = len(qr_code(url).matrix)
        start = QR_BORDER * scale + scale // 2
        return [[gray.getpixel((x0 + start + col * scale, y0 + start + row * scale)) < 128 for col in range(size)]
                for row in range(size)]

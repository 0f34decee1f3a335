"""The gettext catalogs of the host and of each plugin package: extract, update, check.

A *package* is a folder of code with its own ``translations/`` folder: ``kamengsite/``
itself, each ``plugins/*/<module>/`` and each ``themes/<name>/``. ``extract`` reads the strings
wrapped in ``_``/``_l``/``_n``/``gettext``… from its Python files and templates, and the
interface texts of its JSON schemas (section types, theme settings: ``extract_schema``); ``update`` adds
new ones to each catalog (English: the text itself; Chinese: left empty to be
translated) and drops the ones no longer used; ``missing`` lists what a catalog
lacks, which ``tests/test_i18n.py`` requires to be nothing.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po, write_po

from .i18n import DOMAIN, LOCALES, catalog_folder, compile_catalogs, load_catalog

SOURCE_LOCALE = "en"  # msgids are English; its catalog copies them, so wording can change without code
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None, "lazy_gettext": None, "_n": (1, 2)}
METHODS = [
    ("**/translations/**", "ignore"),
    ("**/tests/**", "ignore"),
    ("**/migrations/**", "ignore"),
    ("**.py", "python"),
    ("**/templates/**.html", "jinja2.ext:babel_extract"),
    ("sections/**.html", "jinja2.ext:babel_extract"),  # a theme's own section types
    # The names, labels and infos of section schemas (the host's and a theme's) and of theme settings.
    ("**/templates/sections/*.json", "kamengsite.catalogs:extract_schema"),
    ("sections/*.json", "kamengsite.catalogs:extract_schema"),
    ("theme.json", "kamengsite.catalogs:extract_schema"),
]
_JINJA = {"trimmed": "true", "newstyle_gettext": "true"}
OPTIONS = {"**/templates/**.html": _JINJA, "sections/**.html": _JINJA}
HOST_PACKAGE = Path(__file__).parent


@dataclass(frozen=True)
class Package:
    name: str
    folder: Path  # the module folder; catalogs in folder / "translations"

    @property
    def translations(self) -> Path:
        return self.folder / "translations"

    def po(self, locale: str) -> Path:
        return self.translations / catalog_folder(locale) / "LC_MESSAGES" / f"{DOMAIN}.po"


def packages(root: Path | None = None) -> list[Package]:
    """The host, every plugin module under ``plugins/`` and every theme under ``themes/`` of a checkout."""
    found = [Package("kamengsite", HOST_PACKAGE)]
    root = root or HOST_PACKAGE.parent
    for project in sorted((root / "plugins").glob("*/pyproject.toml")):
        for module in sorted(project.parent.glob("kamengsite_*/__init__.py")):
            found.append(Package(module.parent.name, module.parent))
    for theme in sorted((root / "themes").glob("*/theme.json")):
        found.append(Package(f"theme-{theme.parent.name}", theme.parent))
    return found


def extract(package: Package) -> Catalog:
    """Every translatable string of ``package``, with where it is used."""
    catalog = Catalog(domain=DOMAIN, project=package.name)
    for filename, lineno, message, comments, context in extract_from_dir(
            str(package.folder), method_map=METHODS, options_map=OPTIONS, keywords=KEYWORDS,
            comment_tags=("i18n:",), strip_comment_tags=True):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


# -- JSON schemas ---------------------------------------------------------------------


class _Located(str):
    """A string of a JSON file that knows its line."""

    line = 1


def load_located_json(text: str):
    """``json.loads(text)``, with every string *value* a ``_Located`` carrying its line (keys stay plain)."""
    decoder = json.JSONDecoder()

    def parse_string(source, end, strict):
        value, after = json.decoder.scanstring(source, end, strict)
        located = _Located(value)
        located.line = source.count("\n", 0, end) + 1
        return located, after

    decoder.parse_string = parse_string
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # the pure-Python scanner calls parse_string
    return decoder.decode(text)


def is_schema_file(path: Path) -> bool:
    """A section schema (``sections/<type>.json``) or a theme manifest (``theme.json``)."""
    return path.suffix == ".json" and (path.name == "theme.json" or path.parent.name == "sections")


def schema_texts(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """``[(line, text)]`` of the interface texts of a JSON schema file (``layouts.schema_words``).

    ``[]`` for a file that is not valid JSON: loading the theme reports that.
    """
    from .layouts import schema_words

    try:
        data = load_located_json(path.read_text(encoding="utf-8") if text is None else text)
    except ValueError:
        return []
    words = schema_words(data, manifest=path.name == "theme.json")
    return [(getattr(word, "line", 1), str(word)) for word in words if word]


def extract_schema(fileobj, keywords, comment_tags, options):
    """Babel extractor for JSON schemas: a section type's ``name``, its settings' ``label``/``info``,
    select options' ``label``, blocks' ``name`` and presets' ``name``; in ``theme.json``, the
    ``settings_schema`` groups' ``name`` and their settings' texts. Never ``default`` or presets' content."""
    name = Path(getattr(fileobj, "name", "") or "schema.json")
    text = fileobj.read().decode(options.get("encoding", "utf-8"))
    for line, message in schema_texts(name, text):
        yield line, None, message, []


def _read(path: Path, locale: str) -> Catalog:
    if not path.exists():
        return Catalog(locale=locale, domain=DOMAIN)
    return load_catalog(sorted(path.parent.glob("*.po")), locale)


def update(package: Package) -> dict[str, int]:
    """Bring each locale's catalog of ``package`` in line with its code; ``{locale: untranslated}``."""
    template = extract(package)
    result = {}
    for locale in LOCALES:
        path = package.po(locale)
        old = _read(path, locale)
        new = Catalog(locale=locale, domain=DOMAIN, project=package.name,
                      fuzzy=False, header_comment=f"# {package.name}: {locale} messages (kamengsite i18n update)")
        for message in template:
            if not message.id:
                continue
            kept = old.get(message.id, message.context)
            string = kept.string if kept is not None and not kept.fuzzy else ""
            if locale == SOURCE_LOCALE and not _filled(string):
                string = message.id
            new.add(message.id, string, message.locations, auto_comments=message.auto_comments,
                    context=message.context)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            write_po(out, new, width=100, sort_output=False, omit_header=False)
        for extra in path.parent.glob("*.po"):  # fragments are merged into messages.po by now
            if extra != path:
                extra.unlink()
        result[locale] = sum(1 for m in new if m.id and not _filled(m.string))
    compile_catalogs(package.translations)
    return result


def _filled(string) -> bool:
    if isinstance(string, (tuple, list)):
        return all(string)
    return bool(string)


def missing(package: Package, locale: str) -> list[str]:
    """The strings of ``package`` its ``locale`` catalog does not translate (absent, empty or fuzzy)."""
    path = package.po(locale)
    catalog = _read(path, locale)
    gaps = []
    for message in extract(package):
        if not message.id:
            continue
        found = catalog.get(message.id, message.context)
        if found is None or found.fuzzy or not _filled(found.string):
            where = ", ".join(f"{f}:{n}" for f, n in message.locations[:2])
            gaps.append(f"{message.id if isinstance(message.id, str) else message.id[0]!r} ({where})")
    return gaps


def read_catalog(package: Package, locale: str) -> Catalog:
    with open(package.po(locale), "rb") as fh:
        return read_po(fh, locale=locale)


# -- strings left untranslatable ------------------------------------------------------

_CJK = re.compile(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]")
KEEP = "i18n: keep"  # on a line whose Chinese is data, not interface (a language's own name, demo content)
#: Files whose Chinese is content an owner gets to edit (demo shop, site templates), not interface text.
CONTENT_FILES = ("demo.py", "scaffold/", "migrations/", "testing.py")


def hardcoded(path: Path) -> list[tuple[int, str]]:
    """``[(line, text)]`` of Chinese written straight into a Python string, a template or the
    interface texts of a JSON schema (a section type's labels, a theme's settings).

    Interface text is written in English inside ``_()`` and translated by the catalog, so
    Chinese in code means a string nobody can translate. Docstrings and comments don't count.
    """
    if path.suffix == ".py":
        return _hardcoded_python(path)
    if path.suffix in (".html", ".js", ".txt"):
        return _hardcoded_text(path)
    if is_schema_file(path):  # the interface texts of a schema; its defaults and presets are content
        return [(row, text) for row, text in schema_texts(path) if _CJK.search(text)]
    return []


def _hardcoded_python(path: Path) -> list[tuple[int, str]]:
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    with open(path, "rb") as fh:
        tokens = [t for t in tokenize.tokenize(fh.readline)
                  if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENCODING)]
    for i, token in enumerate(tokens):
        if token.type != tokenize.STRING or not _CJK.search(token.string):
            continue
        before = tokens[i - 1].type if i else tokenize.NEWLINE
        after = tokens[i + 1].type if i + 1 < len(tokens) else tokenize.NEWLINE
        if before in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) and after == tokenize.NEWLINE:
            continue  # a docstring (a bare string statement)
        row = token.start[0]
        if KEEP in lines[row - 1]:
            continue
        found.append((row, lines[row - 1].strip()))
    return found


def _hardcoded_text(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\{#.*?#\}", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    if path.suffix == ".js":
        text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        text = re.sub(r"(?m)^\s*//.*$", "", text)
    raw = path.read_text(encoding="utf-8").splitlines()
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if _CJK.search(line) and KEEP not in raw[n - 1]]


def untranslatable(package: Package) -> list[str]:
    """Every hard-coded Chinese line of ``package`` as ``file:line: text``."""
    found = []
    for path in sorted(package.folder.rglob("*")):
        rel = path.relative_to(package.folder).as_posix()
        if (not path.is_file() or "/tests/" in f"/{rel}" or rel.startswith(("translations/", "static/vendor"))
                or rel.endswith(".min.js") or any(rel.startswith(c) or rel == c for c in CONTENT_FILES)):
            continue
        for row, text in hardcoded(path):
            found.append(f"{path}:{row}: {text}")
    return found


def shadowed_gettext(path: Path) -> list[tuple[int, str]]:
    """``[(line, function)]`` of functions that call ``_()`` and also bind ``_`` (``for _ in``,
    ``a, _ = …``): there ``_`` is a local, and the call fails, or worse, calls something else."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        binds = calls = False
        # A comprehension's loop variables live in the comprehension's own scope: they hide nothing.
        own_scope = {id(target) for comp in ast.walk(node) if isinstance(comp, ast.comprehension)
                     for target in ast.walk(comp.target)}
        for inner in ast.walk(node):
            if isinstance(inner, ast.Name) and inner.id == "_" and id(inner) not in own_scope:
                if isinstance(inner.ctx, ast.Store):
                    binds = True
            if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "_":
                calls = True
            if isinstance(inner, ast.arg) and inner.arg == "_":
                binds = True
        if binds and calls:
            found.append((node.lineno, getattr(node, "name", "<lambda>")))
    return found

"""`GET /widget.js` as one file: the vendored marked and DOMPurify and the widget's own code, each in a function
scope of one outer function, so the host page gets one request and no globals.

Joined at start-up rather than by a build step: there is nothing to build or commit twice, and the bytes (and so
the ETag) change only when a file under static/ does."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
WIDGET = STATIC / "widget" / "widget.js"

# The UMD builds see `module`/`exports` in their scope, take the CommonJS branch and export there, not on window.
_MODULE = """var {name} = (function () {{
var module = {{ exports: {{}} }}, exports = module.exports, define = undefined;
{code}
;return module.exports;
}})();
"""


@dataclass(frozen=True, slots=True)
class Bundle:
    body: bytes
    gzipped: bytes  # compressed once, sent to every browser that accepts gzip (all do)
    etag: str


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@cache
def widget_bundle() -> Bundle:
    """The script, joined once per process."""
    parts = [
        "/*! bookrag widget. Includes marked 18.2.1 (MIT, (c) MarkedJS, Christopher Jeffrey) and DOMPurify 3.5.0 "
        "(Apache-2.0 or MPL-2.0, (c) Cure53); see /widget-licenses.txt */",
        "(function () {",
        _MODULE.format(name="marked", code=_read(VENDOR / "marked.umd.js")),
        _MODULE.format(name="DOMPurify", code=_read(VENDOR / "purify.min.js")),
        "(function (marked, DOMPurify) {",
        _read(WIDGET),
        "})(marked, DOMPurify);",
        "})();",
        "",
    ]
    body = "\n".join(parts).encode("utf-8")
    return Bundle(
        body, gzip.compress(body, compresslevel=9, mtime=0), '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    )


@cache
def widget_licenses() -> str:
    """The licences of what the bundle includes, as their packages ship them."""
    sections = [
        ("marked 18.2.1", VENDOR / "LICENSE.marked"),
        ("DOMPurify 3.5.0", VENDOR / "LICENSE.dompurify"),
    ]
    return "\n\n".join(f"==== {name} ====\n\n{_read(path)}" for name, path in sections)

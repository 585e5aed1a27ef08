"""Imported once by the parse worker's forkserver (`ingest.parse_worker`), so that every child starts warm.

On purpose, importing this has effects: it installs the offline NLP and partitions a tiny text of each kind,
because `unstructured` imports and builds much on first use (spaCy, its element classifiers), which would
otherwise cost each forked child seconds. Nothing else imports it.
"""

from __future__ import annotations

from ingest.loaders import _partition

for _kind in ("md", "html", "text"):
    _partition(_kind, text="# Warm up\n\nOne sentence to warm the partitioners. Another one.\n")

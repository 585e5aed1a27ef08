"""Make `unstructured` work offline.

`unstructured` classifies plain-text elements with a spaCy pipeline that it downloads from GitHub on first use,
which fails behind a firewall (and on this project's CI). The only things it asks of that pipeline are sentence
boundaries and part-of-speech tags for heuristics; a blank English pipeline with a rule-based sentencizer gives
the first and no tags (so "contains a verb" is always false). Headings in HTML, DOCX and Markdown come from tags
and styles, not from these heuristics, so nothing this project relies on changes. On purpose, this replaces a
private function of `unstructured`; `tests/test_loaders.py` fails if that function moves.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _blank_english() -> Any:
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


@lru_cache(maxsize=1)
def install_offline_nlp() -> None:
    """Point `unstructured` at a local spaCy pipeline (idempotent)."""
    os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
    import unstructured.nlp.tokenize as tokenize

    if not hasattr(tokenize, "_get_nlp"):
        raise RuntimeError("unstructured.nlp.tokenize._get_nlp is gone: update ingest/offline_nlp.py")
    tokenize._get_nlp = _blank_english

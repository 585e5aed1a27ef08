"""`rag-report`: what readers asked that the book did not answer well, for its authors.

Reads the records database (`DATABASE_URL`, the same one the API writes) directly; no server needs to run.
Three lists, each grouped by the chapter and section the question came closest to, most frequent first:
questions the book did not answer (refusals), answers readers rated down (with their comments), and answers
that were weakly supported (a low best passage score, or citations that named no source). Then the words readers
used that the book never does, most asked first: what a refusal named ("Kubernetes"), and the uncommon words of
questions answered anyway ("cider" in an orchard book), which are often a topic the book lacks.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import click
from pydantic import ValidationError

from chains.settings import Settings, settings_error_message
from rag_api.records import RecordStore

Kind = Literal["unanswered", "disliked", "weak"]
KINDS: tuple[Kind, ...] = ("unanswered", "disliked", "weak")
REFUSAL_MODES = frozenset({"not_in_book", "refused"})
_SINCE = re.compile(r"^\s*(\d+)\s*([dhw])\s*$")
_WORDS = re.compile(r"\w+")


@dataclass(slots=True)
class ReportItem:
    """One question (as readers phrased it, normalised) of one kind, near one chapter and section."""

    kind: Kind
    question: str
    chapter: str | None
    section: str | None
    count: int = 0
    last_asked: str = ""
    best_score: float | None = None
    comments: list[str] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)


@dataclass(slots=True)
class TermItem:
    """A word of readers' questions that the book never uses: how often, how often refused, and the latest asks."""

    term: str
    count: int = 0
    refused: int = 0
    questions: list[str] = field(default_factory=list)


_TERM_EXAMPLES = 3


def parse_since(value: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """`7d`, `24h`, `2w`, or an ISO date or time (UTC when it names no zone)."""
    if value is None or not value.strip():
        return None
    now = now or dt.datetime.now(dt.UTC)
    relative = _SINCE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        hours = {"h": 1, "d": 24, "w": 24 * 7}[unit]
        return now - dt.timedelta(hours=amount * hours)
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use a duration like 7d, 24h, 2w or a date like 2026-11-01") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def question_key(question: str) -> str:
    """Questions that differ only in case, spacing and punctuation count as one."""
    return " ".join(_WORDS.findall(question.casefold()))


def kinds_of(row: dict[str, Any], weak_score: float) -> list[Kind]:
    """Which lists a recorded answer belongs in."""
    kinds: list[Kind] = []
    refused = row["mode"] in REFUSAL_MODES
    if refused:
        kinds.append("unanswered")
    if any(fb["rating"] == "down" for fb in row.get("feedback", [])):
        kinds.append("disliked")
    best = row.get("best_score")
    if not refused and ((best is not None and best < weak_score) or row.get("invalid_citations")):
        kinds.append("weak")
    return kinds


def build_report(rows: Iterable[dict[str, Any]], weak_score: float) -> dict[Kind, list[ReportItem]]:
    groups: dict[tuple[Kind, str | None, str | None, str], ReportItem] = {}
    for row in rows:
        asked = _iso(row["created_at"])
        for kind in kinds_of(row, weak_score):
            key = (kind, row.get("top_source"), row.get("top_section"), question_key(row["question"]))
            item = groups.get(key)
            if item is None:
                item = groups[key] = ReportItem(kind, row["question"], row.get("top_source"), row.get("top_section"))
            item.count += 1
            if asked >= item.last_asked:
                item.last_asked, item.question = asked, row["question"]
            best = row.get("best_score")
            if best is not None:
                item.best_score = best if item.best_score is None else min(item.best_score, best)
            if kind == "disliked":
                item.comments.extend(
                    fb["comment"] for fb in row.get("feedback", []) if fb["rating"] == "down" and fb["comment"]
                )
            if kind == "weak":
                item.invalid_citations = sorted(set(item.invalid_citations) | set(row.get("invalid_citations") or []))
    report: dict[Kind, list[ReportItem]] = {kind: [] for kind in KINDS}
    for item in groups.values():
        report[item.kind].append(item)
    for items in report.values():
        items.sort(key=lambda i: (-i.count, i.chapter or "\uffff", i.section or "", i.question.casefold()))
    return report


def build_terms(rows: Iterable[dict[str, Any]]) -> list[TermItem]:
    """The recorded answers' `terms_not_in_book`, counted without case (an answer counts a term once), most asked
    first; each with its latest questions, most recent first."""
    items: dict[str, TermItem] = {}
    for row in sorted(rows, key=lambda r: _iso(r["created_at"]), reverse=True):
        for term in dict.fromkeys(t.casefold() for t in row.get("terms_not_in_book") or ()):
            item = items.setdefault(term, TermItem(term))
            item.count += 1
            item.refused += row["mode"] in REFUSAL_MODES
            if len(item.questions) < _TERM_EXAMPLES and row["question"] not in item.questions:
                item.questions.append(row["question"])
    return sorted(items.values(), key=lambda i: (-i.count, i.term))


def render_json(
    report: dict[Kind, list[ReportItem]], total: int, since: dt.datetime | None, terms: Sequence[TermItem] = ()
) -> str:
    body: dict[str, object] = {
        "since": since.isoformat() if since else None,
        "answers": total,
        **{kind: [asdict(item) for item in items] for kind, items in report.items()},
        "terms_not_in_book": [asdict(item) for item in terms],
    }
    return json.dumps(body, indent=2, ensure_ascii=False)


def render_csv(report: dict[Kind, list[ReportItem]], terms: Sequence[TermItem] = ()) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["kind", "count", "question", "chapter", "section", "best_score", "last_asked", "comments"])
    for kind, items in report.items():
        for item in items:
            score = "" if item.best_score is None else f"{item.best_score:.3f}"
            comments = " | ".join(item.comments)
            place = [item.chapter or "", item.section or ""]
            writer.writerow([kind, item.count, item.question, *place, score, item.last_asked, comments])
    for term in terms:  # the question column names the term; the comments column its latest questions
        writer.writerow(["term_not_in_book", term.count, term.term, "", "", "", "", " | ".join(term.questions)])
    return out.getvalue()


_TITLES: dict[Kind, str] = {
    "unanswered": "Questions the book did not answer",
    "disliked": "Answers readers rated down",
    "weak": "Weakly supported answers",
}


def render_markdown(
    report: dict[Kind, list[ReportItem]], total: int, since: dt.datetime | None, terms: Sequence[TermItem] = ()
) -> str:
    period = f" since {since:%Y-%m-%d %H:%M} UTC" if since else ""
    lines = [f"# What readers asked{period}", "", f"{total} answers recorded.", ""]
    for kind, items in report.items():
        lines += [f"## {_TITLES[kind]} ({sum(i.count for i in items)})", ""]
        if not items:
            lines += ["None.", ""]
            continue
        for chapter, section, group in _by_place(items):
            place = chapter or "(no passage came close)"
            lines.append(f"### {place}" + (f" — {section}" if section else ""))
            for item in group:
                extra = []
                if item.best_score is not None:
                    extra.append(f"best score {item.best_score:.2f}")
                if item.invalid_citations:
                    extra.append("cited no source: " + ", ".join(f"[{n}]" for n in item.invalid_citations))
                suffix = f" ({'; '.join(extra)})" if extra else ""
                lines.append(f"- {item.count}× “{item.question}”{suffix}")
                lines += [f"  - comment: {comment}" for comment in item.comments]
            lines.append("")
    lines += [f"## Words readers used that the book never does ({len(terms)})", ""]
    if not terms:
        lines.append("None.")
    for term in terms:
        refused = f", refused {term.refused}×" if term.refused else ""
        lines.append(f"- “{term.term}”: {term.count}×{refused}, e.g. “{term.questions[0]}”")
    return "\n".join(lines).rstrip() + "\n"


def _by_place(items: Sequence[ReportItem]) -> list[tuple[str | None, str | None, list[ReportItem]]]:
    """Items grouped by chapter and section, the group asked most often first."""
    places: dict[tuple[str | None, str | None], list[ReportItem]] = {}
    for item in items:
        places.setdefault((item.chapter, item.section), []).append(item)
    ordered = sorted(places.items(), key=lambda kv: (-sum(i.count for i in kv[1]), kv[0][0] or "\uffff"))
    return [(chapter, section, group) for (chapter, section), group in ordered]


def _iso(value: object) -> str:
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).isoformat(timespec="seconds")
    return str(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--since", help="Only answers after this: a duration (7d, 24h, 2w) or a date (2026-11-01).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["markdown", "json", "csv"]),
    default="markdown",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--weak-score",
    type=click.FloatRange(0, 1),
    default=None,
    help="An answer whose best passage scored below this is weakly supported "
    "[default: RETRIEVAL_SCORE_THRESHOLD + 0.1].",
)
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    help="The records database (SQLAlchemy URL) [default: DATABASE_URL, else the API's default SQLite file].",
)
def main(since: str | None, output_format: str, weak_score: float | None, database_url: str | None) -> None:
    """Report what readers asked that the book did not answer, rated down, or answered on weak evidence."""
    try:
        settings = Settings() if database_url is None else Settings(database_url=database_url)
    except ValidationError as exc:
        raise click.UsageError(settings_error_message(exc)) from exc
    start = parse_since(since)
    try:
        store = RecordStore.open(settings.database_url)
    except Exception as exc:
        raise click.ClickException(f"cannot open the records database {settings.database_url!r}: {exc}") from exc
    try:
        rows = list(store.answers_since(start))
    finally:
        store.close()
    threshold = weak_score if weak_score is not None else settings.retrieval_score_threshold + 0.1
    report = build_report(rows, threshold)
    terms = build_terms(rows)
    if output_format == "json":
        text = render_json(report, len(rows), start, terms)
    elif output_format == "csv":
        text = render_csv(report, terms)
    else:
        text = render_markdown(report, len(rows), start, terms)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")

"""From the answer's events to the AI SDK's UI message stream (protocol v1), the wire format of `useChat`.

Checked against the `UIMessageChunk` type and `UI_MESSAGE_STREAM_HEADERS` of the `ai` npm package, version
7.0.173 (the version tests/js pins). One answer is one assistant message:

    start -> data-status (transient) -> source-document x n -> data-status (transient)
          -> text-start, text-delta..., text-end -> finish -> [DONE]

On purpose: sources come before any text, one `source-document` per passage, so a reader sees what the answer
stands on while it is written; the passage number the answer cites as [n], its text, score, page and URL ride
in `providerMetadata.bookrag`. A failure after the stream started ends the open text part, sends one
`message-metadata` chunk with the error code and one `error` chunk (the safe message of
`rag_api.errors.classify`, never internal text), then `[DONE]`: the client sees a clean end. Every field used
here is also in the chunk schema of ai 5.0.277; `text-end.citations` (new in ai 7) is left out, the answer's
cited numbers are in the finish metadata.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

from chains.answer import (
    AnswerEvent,
    DoneEvent,
    ErrorEvent,
    HighlightsEvent,
    Source,
    SourcesEvent,
    StatusEvent,
    TokenEvent,
)
from rag_api.streaming import dumps, guard, usage_named

# The headers of `UI_MESSAGE_STREAM_HEADERS` that EventSourceResponse does not set itself (it sets the content
# type, `Connection: keep-alive` and `X-Accel-Buffering: no`).
UI_MESSAGE_STREAM_HEADERS = {"Cache-Control": "no-cache", "x-vercel-ai-ui-message-stream": "v1"}
PROVIDER = "bookrag"  # the providerMetadata key of the service's own fields
TEXT_PART_ID = "answer"  # one text part an answer
SEP = "\n"  # lines end as the AI SDK's own server writes them (sse-starlette's default is CRLF): pings too
DONE = b"data: [DONE]\n\n"
_MEDIA_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".mdx": "text/markdown",  # its JSX is dropped at ingest: the passages are Markdown
    ".rst": "text/x-rst",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "application/xhtml+xml",  # also an EPUB's chapters: book.epub/text/ch01.xhtml
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}

Chunk = dict[str, Any]


def new_message_id() -> str:
    return f"msg-{uuid.uuid4().hex}"


def media_type(source: Source) -> str:
    """The media type of the file a passage comes from (text/plain for a reader's selection)."""
    return _MEDIA_TYPES.get(PurePosixPath(source.source).suffix.lower(), "text/plain")


def source_id(source: Source) -> str:
    """The same id for the same passage in every answer: its file and chunk index (S<n> for a selection)."""
    if source.chunk_index is None:
        return f"S{source.number}"
    return f"{source.source}#{source.chunk_index}"


def source_document(source: Source) -> Chunk:
    return {
        "type": "source-document",
        "sourceId": source_id(source),
        "mediaType": media_type(source),
        "title": source.label,
        "filename": source.source,
        "providerMetadata": {
            PROVIDER: {
                "number": source.number,
                "score": source.score,
                "url": source.url,
                "pagePath": source.page_path,
                "anchor": source.anchor,
                "page": source.page,
                "chunkIndex": source.chunk_index,
                "headingPath": list(source.heading_path),
                "sections": [
                    {"start": s.start, "headingPath": s.heading_path, "url": s.url, "anchor": s.anchor}
                    for s in source.sections
                ],
                "text": source.text,
            }
        },
    }


def finish_metadata(event: DoneEvent, request_id: str | None) -> dict[str, Any]:
    """The assistant message's metadata once it is whole (camelCase, as JavaScript reads it)."""
    return {
        "answerId": event.answer_id,
        "mode": event.mode,
        "citations": event.citations,
        "invalidCitations": event.invalid_citations,
        "usage": usage_named(event.usage, ("inputTokens", "outputTokens", "totalTokens")),
        "timings": {
            "retrievalMs": event.timings.retrieval_ms,
            "firstTokenMs": event.timings.first_token_ms,
            "totalMs": event.timings.total_ms,
        },
        "requestId": request_id,
        "historyTurnsUsed": event.history_turns_used,
        "termsNotInBook": event.terms_not_in_book,
    }


def status_chunk(event: StatusEvent) -> Chunk:
    """A typing indicator: transient, so `onData` sees it and the message does not keep it."""
    return {"type": "data-status", "id": "status", "data": {"stage": event.stage}, "transient": True}


def closing_chunks(event: DoneEvent | ErrorEvent, text_open: bool, request_id: str | None) -> list[Chunk]:
    """The last chunks of an answer: the end of its text part, then `finish`, or the error."""
    chunks: list[Chunk] = [{"type": "text-end", "id": TEXT_PART_ID}] if text_open else []
    if isinstance(event, DoneEvent):
        chunks.append({"type": "finish", "finishReason": "stop", "messageMetadata": finish_metadata(event, request_id)})
    else:
        chunks.append({"type": "message-metadata", "messageMetadata": {"error": {"code": event.code}}})
        chunks.append({"type": "error", "errorText": event.message})
    return chunks


def encode_chunk(chunk: Chunk) -> bytes:
    """One server-sent event: `data: <JSON>` and a blank line (JSON escapes newlines, so one line suffices)."""
    return b"data: " + dumps(chunk).encode() + b"\n\n"


_DELTA = 'data: {"type":"text-delta","id":"' + TEXT_PART_ID + '","delta":%s}\n\n'


async def ui_message_sse(
    events: AsyncIterator[AnswerEvent], request_id: str | None, message_id: str
) -> AsyncIterator[bytes]:
    """`/api/chat`'s stream: `data: <chunk JSON>` lines ending with `finish` or `error`, then `data: [DONE]`
    (nothing more once cancelled)."""
    yield encode_chunk({"type": "start", "messageId": message_id})
    text_open = False
    async for event in guard(events, request_id):
        if isinstance(event, TokenEvent):  # the hot path: no dict, one small dumps
            if not text_open:
                text_open = True
                yield encode_chunk({"type": "text-start", "id": TEXT_PART_ID})
            yield (_DELTA % dumps(event.text)).encode()
        elif isinstance(event, StatusEvent):
            yield encode_chunk(status_chunk(event))
        elif isinstance(event, SourcesEvent):
            for source in event.sources:
                yield encode_chunk(source_document(source))
        elif isinstance(event, HighlightsEvent):
            continue  # the UI message stream's source documents carry no highlights
        else:
            for chunk in closing_chunks(event, text_open, request_id):
                yield encode_chunk(chunk)
    yield DONE

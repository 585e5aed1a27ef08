"""The one typed settings object, read from the environment and an optional `.env`.

Ingest, chains and the API all take a `Settings` instance as an argument; nothing deeper in the code reads
`os.environ`. A wrong value fails at start-up with pydantic's message, which names the variable.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, NamedTuple, Self

from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    DirectoryPath,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_COLLECTION = "ai_book_rag_chunks"

# Ceilings of the request limits: the OpenAPI schema states these; the settings below may only lower them.
MAX_QUESTION_CHARS = 4000
MAX_SELECTED_CHARS = 8000
MAX_HISTORY_TURNS = 20
MAX_K = 20


class CosineCuts(NamedTuple):
    """An embedding model's cosine cuts (the settings named after them), calibrated on bench/questions."""

    passage: float  # RETRIEVAL_SCORE_THRESHOLD
    sentence: float  # RETRIEVAL_SENTENCE_THRESHOLD
    strong_match: float  # REFUSAL_STRONG_MATCH
    strong_sentence: float  # REFUSAL_STRONG_SENTENCE


# What a cosine means depends on the embedding model: a packaged model's own defaults for the cosine cuts below,
# calibrated on bench/questions (docs/retrieval.md, "A second packaged model", "Two more books"). BGE's cosines
# crowd into a higher, narrower band than MiniLM's; its sentence cuts were not calibrated (1.0: off). Another
# model starts from MiniLM's figures and should be measured.
MODEL_COSINE_CUTS: dict[str, CosineCuts] = {
    "all-MiniLM-L6-v2": CosineCuts(0.35, 0.46, 0.60, 0.70),
    "bge-small-en-v1.5": CosineCuts(0.58, 1.0, 0.75, 1.0),
}


def model_cosine_cuts(model: str) -> CosineCuts:
    """The calibrated cosine cuts of `model` (a Hugging Face name's organisation ignored), else MiniLM's."""
    return MODEL_COSINE_CUTS.get(model.rsplit("/", 1)[-1], MODEL_COSINE_CUTS["all-MiniLM-L6-v2"])


class Settings(BaseSettings):
    """Every knob of the service, with the environment variable named after the field (upper case)."""

    # An empty variable counts as unset (compose passes `${VAR:-}` as ""), so it falls back to the default.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True)

    # Qdrant: a server when QDRANT_URL is set, else an on-disk embedded store at QDRANT_PATH.
    qdrant_url: AnyHttpUrl | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path = Path("data/qdrant")
    qdrant_collection: str = Field(DEFAULT_COLLECTION, pattern=r"^[A-Za-z0-9_\-]{1,255}$")
    qdrant_timeout_s: float = Field(10.0, gt=0, le=300)
    # Without QDRANT_URL the store is Qdrant's own engine in this process (qdrant-edge-py, chains/edge_client.py),
    # in QDRANT_PATH/edge; a store left by qdrant-client's local mode (before 0.9) is migrated on first open.
    # Collection layout, applied when the collection is created (an existing collection keeps its own):
    # shards and replicas for a cluster (QDRANT_SHARDS is the older name of QDRANT_SHARD_NUMBER), how many
    # replicas must confirm a write, vectors and payload on disk, quantized vectors kept in RAM, HNSW options.
    qdrant_shard_number: int = Field(
        1, ge=1, le=64, validation_alias=AliasChoices("qdrant_shard_number", "qdrant_shards")
    )
    qdrant_replication_factor: int = Field(1, ge=1, le=16)
    qdrant_write_consistency_factor: int | None = Field(None, ge=1, le=16)
    qdrant_on_disk: bool = False
    qdrant_quantization: Literal["none", "scalar", "binary"] = "none"
    qdrant_hnsw_m: int | None = Field(None, ge=4, le=128)
    qdrant_hnsw_ef_construct: int | None = Field(None, ge=4, le=1024)
    # A collection of up to this many chunks is searched exactly (no HNSW graph: Qdrant's indexing threshold set
    # just above that many dense vectors, embedded and on a server); above it, HNSW searched with beam width
    # QDRANT_HNSW_EF (256: recall@5 0.98 against 0.87 at 20k chunks). 0: Qdrant's own threshold (~6,600 chunks
    # of 384 dimensions). docs/benchmarks.md, "The engine as the embedded default", has the measurements.
    qdrant_exact_up_to_chunks: int = Field(20_000, ge=0, le=10_000_000)
    qdrant_hnsw_ef: int | None = Field(256, ge=4, le=4096)

    # Embeddings: a packaged local model by default, OpenAI (or compatible) when chosen.
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_batch_size: int = Field(64, ge=1, le=2048)
    embedding_cache_size: int = Field(1024, ge=0, le=1_000_000)
    # The local model embeds documents and questions through ONNX Runtime (the same vectors as PyTorch, faster, and
    # no PyTorch at run time), from a graph exported once into EMBEDDING_ONNX_DIR; "torch" runs sentence-transformers.
    # EMBEDDING_QUERY_RUNTIME is the older name of the same setting.
    embedding_runtime: Literal["onnx", "torch"] = Field(
        "onnx", validation_alias=AliasChoices("embedding_runtime", "embedding_query_runtime")
    )
    embedding_onnx_dir: Path = Path("data/onnx")
    # Cores ONNX Runtime uses to embed documents (ingest); None: every core the process may run on. Questions
    # always take one thread each.
    embedding_threads: int | None = Field(None, ge=1, le=256)
    # "int8": the ONNX graph's matrix products with int8 weights (dynamic quantisation, per channel; made once from
    # the float graph, which needs the `export` extra): about 0.55 of the CPU seconds, vectors at cosine >= 0.99 to the
    # float ones (docs/ingest.md has the retrieval quality with and without).
    embedding_quantize: Literal["off", "int8"] = "off"

    # Chat model through any OpenAI-compatible endpoint. No CHAT_MODEL means extractive answers.
    openai_api_key: SecretStr | None = None
    openai_base_url: AnyHttpUrl | None = None
    chat_model: str | None = None
    chat_temperature: float = Field(0.1, ge=0.0, le=2.0)
    chat_timeout_s: float = Field(60.0, gt=0, le=600)
    chat_max_retries: int = Field(2, ge=0, le=10)
    chat_max_tokens: int | None = Field(None, ge=1, le=32_768)
    # The passages the model reads, in characters at most in all (chains/passage_budget.py); 0: all of them. Long
    # passages are cut around the chunk they were found by; lower it for a model with a small context window
    # (about 4 characters a token in English).
    chat_passage_chars: int = Field(24_000, ge=0, le=2_000_000)

    # Splitting and retrieval.
    chunk_size: int = Field(256, ge=32, le=16_384)
    chunk_overlap: int = Field(48, ge=0, le=4096)
    # What CHUNK_SIZE and CHUNK_OVERLAP count: the embedding model's tokens, or characters.
    chunk_size_unit: Literal["tokens", "chars"] = "tokens"
    retrieval_k: int = Field(5, ge=1, le=50)
    # dense: cosine similarity only; hybrid: dense + a local BM25-style sparse vector, fused by Qdrant (RRF).
    retrieval_mode: Literal["dense", "hybrid"] = "hybrid"
    # How hybrid mode merges the dense and sparse candidate lists: reciprocal rank fusion (weights: dense 1,
    # sparse RETRIEVAL_SPARSE_WEIGHT) or distribution-based score fusion (keeps how far ahead a match is).
    retrieval_fusion: Literal["rrf", "dbsf"] = "dbsf"
    retrieval_sparse_weight: float = Field(1.0, gt=0.0, le=10.0)
    # Candidates fetched per vector before fusion (and for reranking/MMR): max(PER_K x k, MIN_CANDIDATES).
    retrieval_candidates_per_k: int = Field(4, ge=1, le=50)
    retrieval_min_candidates: int = Field(20, ge=1, le=500)
    # MMR over the fused candidates, trading relevance (lambda 1) for diversity (lambda 0).
    retrieval_mmr: bool = False
    retrieval_mmr_lambda: float = Field(0.7, ge=0.0, le=1.0)
    # Hybrid mode: the first N fused candidates re-ordered with each passage's best sentence, whose vectors ingest
    # stores in the chunk's payload (chains/sentence_rescore.py; docs/retrieval.md). 0: off, and ingest stores none.
    retrieval_sentence_rescore: int = Field(20, ge=0, le=100)
    # A passage whose section goes on in the next or previous chunk is joined with it: the first NEIGHBOURS_WHOLE
    # passages always, the others when that chunk has a sentence closer to the question (chains/neighbours.py,
    # the sentence vectors above; docs/retrieval.md).
    retrieval_join_neighbours: bool = True
    retrieval_neighbours_whole: int = Field(2, ge=0, le=50)
    # The first passage takes its whole section when the section has at most this many chunks (chains/neighbours.py;
    # docs/retrieval.md); 0: its neighbours only. Needs RETRIEVAL_JOIN_NEIGHBOURS.
    retrieval_section_whole_up_to: int = Field(8, ge=0, le=50)
    # Two passages of one chapter at most this many chunks apart are joined into the higher one, with the chunks
    # between them (chains/neighbours.py; docs/retrieval.md); 0: off. Needs RETRIEVAL_JOIN_NEIGHBOURS.
    retrieval_join_nearby: int = Field(8, ge=0, le=50)
    # A passage reaches the answer only if its dense cosine similarity to the question is at least this;
    # none reaching it means "the book does not cover it" without a model call (docs/retrieval.md). Default: the
    # embedding model's calibrated cut (MODEL_COSINE_CUTS).
    retrieval_score_threshold: float = Field(
        default_factory=lambda data: model_cosine_cuts(data.get("embedding_model", "")).passage, ge=-1.0, le=1.0
    )
    # ...or if its best sentence's cosine is at least this (re-scored passages carry it): a passage just under the
    # threshold that holds one sentence this close to the question is about it. Default: the model's cut; 1.0: off.
    retrieval_sentence_threshold: float = Field(
        default_factory=lambda data: model_cosine_cuts(data.get("embedding_model", "")).sentence, ge=-1.0, le=1.0
    )
    # Refuse a question that names what the book never mentions, saying so (chains/book_terms.py): `words` checks
    # identifiers, capitalised names and lower-case words general English barely knows ("serde", "espalier");
    # `names` only the first two (identifiers and capitalised names); `off` neither, leaving the cosine threshold.
    refusal_term_check: Literal["words", "names", "off"] = "words"
    # With `words`: a missing rare word does not refuse a question whose best passage reaches this cosine (the
    # passage answers it in other words). Default: the embedding model's calibrated cut (MODEL_COSINE_CUTS).
    refusal_strong_match: float = Field(
        default_factory=lambda data: model_cosine_cuts(data.get("embedding_model", "")).strong_match, ge=-1.0, le=1.0
    )
    # The same for a passage's best sentence (a sentence that close answers it in other words; re-scored passages
    # carry it). Default: the embedding model's calibrated cut (MODEL_COSINE_CUTS); 1.0: off.
    refusal_strong_sentence: float = Field(
        default_factory=lambda data: model_cosine_cuts(data.get("embedding_model", "")).strong_sentence,
        ge=-1.0,
        le=1.0,
    )
    # A local directory holding a sentence-transformers cross-encoder; unset: no reranking (never downloaded).
    rerank_model: Path | None = None
    # The book's site, where each source links to (page path and heading anchor are stored at ingest, the URL is
    # composed per answer, so a new BOOK_BASE_URL needs no re-ingest), and the generator that builds it: its page
    # and heading-id rules are applied at ingest (chains/site_urls.py), so changing BOOK_SITE_STYLE re-ingests.
    book_base_url: AnyHttpUrl | None = None
    book_site_style: Literal["docusaurus", "mkdocs", "mdbook", "html"] = "docusaurus"
    # A folder of the book's Markdown served as pages at /book/ with the widget on them (a preview); unset: off.
    book_site_dir: DirectoryPath | None = None
    # The folder that POST /admin/ingest may read from (paths in requests are relative to it); unset: disabled.
    ingest_root: Path | None = None
    # Ingest limits per file, counting what a file decompresses into (a crafted 77 KB PDF can inflate to 50 MB
    # and keep a parser busy for minutes): PDF pages; characters of extracted text; bytes that compressed parts
    # inflate to (PDF page contents, DOCX zip members; checked before they are parsed); elements (DOCX paragraphs
    # and tables, counted before parsing; blocks of any format); chunks; seconds and memory of the child process
    # that parses the file (killed at either). A file over a limit fails naming it; the rest go in.
    ingest_max_pages: int = Field(5000, ge=1, le=1_000_000)
    ingest_max_chars: int = Field(10_000_000, ge=1000, le=1_000_000_000)
    ingest_max_inflated_bytes: int = Field(32 * 1024 * 1024, ge=1024, le=16 * 1024**3)
    ingest_max_elements: int = Field(50_000, ge=10, le=10_000_000)
    ingest_max_chunks_per_file: int = Field(10_000, ge=1, le=10_000_000)
    ingest_max_seconds_per_file: float = Field(300.0, gt=0, le=86_400)
    ingest_max_parser_mb: int = Field(2048, ge=64, le=1_048_576)

    # The record of answers and ratings (rag_api.records, read by rag-report): any SQLAlchemy URL, a SQLite file
    # by default. RECORD_QUESTIONS=false keeps nothing; records older than RECORDS_RETENTION_DAYS are deleted
    # (at start-up and daily); 0 keeps them forever.
    database_url: str = "sqlite:///data/records.sqlite3"
    record_questions: bool = True
    records_retention_days: int = Field(90, ge=0, le=36500)

    # HTTP service.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost:3000", "http://127.0.0.1:8000", "http://localhost:8000"]
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    log_format: Literal["text", "json"] = "text"
    log_questions: bool = False
    # Slow clients: a connection must finish sending a request's headers within HEADER_TIMEOUT_S of opening (or of
    # its first byte after a keep-alive pause), and its body within BODY_TIMEOUT_S of the app asking for it.
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    body_timeout_s: float = Field(30.0, gt=0, le=600)
    # The proxies (IP addresses or CIDR networks, comma-separated; "*" for any) whose X-Forwarded-For and
    # X-Forwarded-Proto name the client. Empty (the default): the socket's peer is the client, headers ignored.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Request limits (each at most the ceiling that the OpenAPI schema states).
    max_question_chars: int = Field(MAX_QUESTION_CHARS, ge=1, le=MAX_QUESTION_CHARS)
    max_selected_chars: int = Field(MAX_SELECTED_CHARS, ge=1, le=MAX_SELECTED_CHARS)
    max_history_turns: int = Field(MAX_HISTORY_TURNS, ge=0, le=MAX_HISTORY_TURNS)
    # How many of the latest conversation turns an answer reads (condensing and the prompt), on every face; older
    # turns are dropped, and the done event / JSON answer says how many were used (`history_turns_used`).
    history_turns: int = Field(6, ge=0, le=MAX_HISTORY_TURNS)
    # How each source's answering sentences are found (chains/highlights.py): `embedding` scores every sentence of
    # the k passages with the embedding model (~80 ms for 5 passages on 2 cores, before the sources event; recent
    # sentences are cached), `lexical` by the question's words only (no model call), `off` sends none.
    source_highlights: Literal["embedding", "lexical", "off"] = "embedding"
    max_k: int = Field(MAX_K, ge=1, le=MAX_K)

    # Access: API keys (comma-separated). Public endpoints need one of API_KEYS when it is set; admin endpoints
    # always need one of ADMIN_API_KEYS (unset: admin endpoints are closed).
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Per-client token bucket (client = API key, else IP): a sustained rate and a burst. 0 turns it off.
    rate_limit_per_minute: int = Field(60, ge=0, le=1_000_000)
    rate_limit_burst: int = Field(20, ge=1, le=1_000_000)

    # Robustness: an overall deadline per request, an idle limit between streamed model chunks, a cap on model
    # calls in flight (a burst waits up to MODEL_QUEUE_TIMEOUT_S for a slot, then gets 503 model_busy), and
    # retries with exponential backoff for Qdrant queries.
    request_timeout_s: float = Field(120.0, gt=0, le=3600)
    stream_idle_timeout_s: float = Field(30.0, gt=0, le=600)
    model_max_concurrency: int = Field(32, ge=1, le=10_000)
    model_queue_timeout_s: float = Field(5.0, ge=0, le=600)
    qdrant_max_retries: int = Field(2, ge=0, le=10)
    qdrant_retry_backoff_s: float = Field(0.2, ge=0, le=30)
    qdrant_recheck_s: float = Field(5.0, gt=0, le=3600)

    # Streamed token deltas that arrive within this many ms of the previous token event are sent together as one
    # event (the first token never waits). 0: merge only deltas already waiting. See docs/streaming.md.
    stream_coalesce_ms: float = Field(25.0, ge=0, le=1000)

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, a CIDR network or *") from None
        return value

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("chat_model", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than CHUNK_SIZE ({self.chunk_size})"
            )
        if self.embedding_provider == "openai" and self.openai_api_key is None and self.openai_base_url is None:
            raise ValueError("EMBEDDING_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        if (
            self.qdrant_write_consistency_factor is not None
            and self.qdrant_write_consistency_factor > self.qdrant_replication_factor
        ):
            raise ValueError(
                f"QDRANT_WRITE_CONSISTENCY_FACTOR ({self.qdrant_write_consistency_factor}) cannot exceed "
                f"QDRANT_REPLICATION_FACTOR ({self.qdrant_replication_factor})"
            )
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("CORS_ORIGINS: '*' cannot be combined with other origins")
        for name, keys in (("API_KEYS", self.api_keys), ("ADMIN_API_KEYS", self.admin_api_keys)):
            if any(len(key.get_secret_value()) < 16 for key in keys):
                raise ValueError(f"{name}: each key must be at least 16 characters long")
        return self

    @property
    def chat_model_configured(self) -> bool:
        return self.chat_model is not None

    @property
    def uses_qdrant_server(self) -> bool:
        return self.qdrant_url is not None

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redactor."""
        secrets = [*self.api_keys, *self.admin_api_keys, self.openai_api_key, self.qdrant_api_key]
        return [s.get_secret_value() for s in secrets if s is not None]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def settings_error_message(exc: ValidationError) -> str:
    """One line naming each bad environment variable and what is wrong with it."""
    problems = []
    for error in exc.errors():
        if error["type"] == "default_factory_not_called":
            continue  # a model-dependent default skipped because another setting is bad: not a problem of its own
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        problems.append(f"{name}: {error['msg']}")
    return "invalid setting: " + "; ".join(problems)

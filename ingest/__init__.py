"""Loading, splitting and indexing a book into Qdrant, and the `rag-ingest` command."""

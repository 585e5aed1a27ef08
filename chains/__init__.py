"""How an answer is made: retrieval, prompts, models, and the Qdrant/embeddings setup shared with ingest."""

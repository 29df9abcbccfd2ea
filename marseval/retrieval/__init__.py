"""Retrieval benchmark (MarsRetrieval): embeddings, indexes, paired, landform and geo scores."""

"""Retrieval in front of the tuned model: a versioned chunk index, hybrid search, and the one
way retrieved chunks enter a prompt (training, evaluation and serving alike)."""

"""Training stage: multi-encoder transformer / conformer models trained on the cached store (reads only the store)."""

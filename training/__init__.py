"""Training stage: multi-encoder transformer / conformer models trained on the cached store. Imports only avsed/core
(it reads the store, never the pipeline); its validator is handed in by the caller (evaluation/validation.py), so
evaluation, grid, detection and flows sit above it."""

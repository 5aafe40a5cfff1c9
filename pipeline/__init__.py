"""Extraction stage: YouTube downloads with an availability ledger, frames, audio, the streaming extraction that
fills the store (avsed/core/store.py) through the feature extractors (features/). Imports only avsed/core and
features; training and everything above read its store, never this package."""

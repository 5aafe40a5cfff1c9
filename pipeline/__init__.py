"""Extraction stage: DESED manifests, YouTube downloads with an availability ledger, frames, the Zarr store."""

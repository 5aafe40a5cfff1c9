"""Serve the Prefect deployments so `prefect deployment run extract-features/<name>` (and `train/<name>`) work."""

from __future__ import annotations

from prefect import serve

from flows.extract import extract_features


def deployments(name: str = "default") -> list:
    from flows.train import train_flow

    return [extract_features.to_deployment(name=name), train_flow.to_deployment(name=name)]


def serve_deployments(name: str = "default", limit: int | None = None) -> None:
    """Blocks: polls the Prefect API for runs of the deployments and executes them in this process."""
    serve(*deployments(name), limit=limit)

"""Serve the Prefect deployments from this process, so `prefect deployment run extract-features/<name>` (and
`train/<name>`, `evaluate/<name>`, `paper/<name>`) work without a work pool. `prefect.yaml` at the repository
root deploys the same flows to a process work pool instead (`prefect deploy --all`, then `prefect worker start
--pool avsed`)."""

from __future__ import annotations

from prefect import serve

from flows.extract import extract_features


def deployments(name: str = "default") -> list:
    from flows.evaluate import evaluate_flow
    from flows.paper import paper_flow
    from flows.train import train_flow

    return [extract_features.to_deployment(name=name), train_flow.to_deployment(name=name),
            evaluate_flow.to_deployment(name=name), paper_flow.to_deployment(name=name)]


def serve_deployments(name: str = "default", limit: int | None = None) -> None:
    """Blocks: polls the Prefect API for runs of the deployments and executes them in this process."""
    serve(*deployments(name), limit=limit)

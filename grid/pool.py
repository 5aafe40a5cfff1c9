"""The grid's units as flow runs of the `train` and `evaluate` deployments of a Prefect work pool: workers (one per
GPU) pull them, and this process only submits, watches and re-submits (grid/run.py decides what and when).

Each poll reads the states of the units in flight in one request. A unit's flow run that failed with an expected
error (an `AvsedError`: a bad configuration, a run directory holding another config) is refused for good; one
that crashed, or that failed otherwise, is lost and submitted again. A unit whose worker died outright (a machine
lost, a SIGKILL: its flow run stays Running on the server for ever) is found by its runs' claims
(grid/claim.py): the claim names the flow run and its holder, and a dead holder's flow run is marked Crashed and
its unit submitted again; the new flow run takes the dead claim over and resumes from the last checkpoints.
A flow run a worker took but never started (left Pending / Submitting: a busy server answered its state change
with an error, its process hung) is cancelled after `START_S` seconds, which frees its worker's slot, and its
unit submitted again.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId,
                                            WorkPoolFilter, WorkPoolFilterName)
from prefect.deployments import run_deployment
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Cancelling, Crashed

from grid.claim import LEASE_S, describe, holder_alive, read_claim
from grid.plan import Unit, run_dir
from grid.run import GridSpec, Outcome
from grid.runs import EvaluationsRefused
from avsed.core.errors import AvsedError

TRAIN_FLOW, EVALUATE_FLOW = "train", "evaluate"
START_S = 300.0  # a flow run taken by a worker (Pending, Submitting) that has not started after this long is stuck
_EXCEPTION = re.compile(r"exception:\s*(\w+):\s*(.*)", re.S)
T = TypeVar("T")


def _patiently(call: Callable[[], T], tries: int = 8, first_delay: float = 1.0) -> T:
    """`call()`, tried again with growing pauses while the server is busy or unreachable (5xx, 429, a dropped
    connection): a grid of hundreds of runs outlives a server's bad minute instead of dying of it."""
    delay = first_delay
    for attempt in range(tries):
        try:
            return call()
        except (PrefectHTTPStatusError, httpx.TransportError) as exc:
            status = exc.response.status_code if isinstance(exc, PrefectHTTPStatusError) else None
            if (status is not None and status < 500 and status != 429) or attempt == tries - 1:
                raise
            time.sleep(delay)
            delay = min(30.0, 2 * delay)
    raise AssertionError("unreachable")


class PoolError(AvsedError):
    """The work pool or its deployments are not there as the grid needs them."""


def _expected_names() -> set[str]:
    names, todo = set(), [AvsedError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def outcome_of(state) -> Outcome | None:
    """The outcome of a final flow-run state (None while it is not final)."""
    if state is None or not state.is_final():
        return None
    if state.is_completed():
        return Outcome("done")
    message = state.message or state.name
    m = _EXCEPTION.search(message or "")
    if state.is_failed() and m and m[1] in _expected_names():
        why = m[2].strip().splitlines()[0]
        return Outcome("refused", why, EvaluationsRefused.parse(why) if m[1] == EvaluationsRefused.__name__ else {})
    if state.is_cancelled():
        return Outcome("refused", f"cancelled ({message})")
    return Outcome("lost", f"{state.name}: {message}" if message else state.name)


def pool_deployments(work_pool: str, deployment: str | None = None, evaluate_pool: str | None = None
                     ) -> dict[str, str]:
    """The `train` deployment of the work pool and the `evaluate` deployment of `evaluate_pool` (default the same
    pool; evaluations can go to a CPU pool), as "flow/deployment" names; `deployment` picks one name where a pool
    has several."""
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(
            name=FlowFilterName(any_=[TRAIN_FLOW, EVALUATE_FLOW])))}
        out = {}
        for flow, pool in ((TRAIN_FLOW, work_pool), (EVALUATE_FLOW, evaluate_pool or work_pool)):
            found = client.read_deployments(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
                                            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
            have = [f"{flow}/{d.name}" for d in found
                    if flows.get(d.flow_id) == flow and (deployment is None or d.name == deployment)]
            if not have:
                raise PoolError(f"work pool {pool!r}: no `{flow}` deployment"
                                f"{' named ' + repr(deployment) if deployment else ''}; deploy them from the "
                                f"repository with `prefect deploy --all --pool {pool}` (prefect.yaml)")
            if len(have) > 1:
                raise PoolError(f"work pool {pool!r} has several `{flow}` deployments ({', '.join(sorted(have))}); "
                                f"name one with --deployment")
            out[flow] = have[0]
    return out


def unit_parameters(unit: Unit, spec: GridSpec) -> dict[str, Any]:
    """The flow-run parameters of a unit (flows/train.py's `train`, flows/evaluate.py's `evaluate`)."""
    if unit.kind == "train":
        return {"store": spec.store, "out_dir": str(Path(spec.out_dir) / "runs" / unit.entry.key),
                "config": spec.config(unit.entry).to_dict(), "seeds": list(unit.seeds)}
    return {"store": spec.store, "run_dirs": [str(run_dir(spec.out_dir, unit.entry, s)) for s in unit.seeds],
            "entry": {**unit.entry.__dict__, "encoders": list(unit.entry.encoders)}, "plots": spec.plots,
            "device": spec.device,
            "audio_weights": list(spec.audio_weights) if len(unit.entry.encoders) > 1 else None}


class PoolExecutor:
    """Submits units as flow runs of the pool's deployments and reports how they ended (grid/run.py's Executor).

    A flow run that does not get going is not waited on for ever: one Pending (a worker took it: `Submitting`)
    for `start_s` seconds without starting is set Cancelling (its worker kills what it started, freeing its slot)
    and its unit submitted again; one Running whose runs' claims say its worker died, or that has held no claim
    on its runs for `lease_s` seconds, is marked Crashed and its unit submitted again. Units all Scheduled for
    `start_s` seconds while none runs are reported once (no worker takes them: resubmitting would not help)."""

    def __init__(self, deployments: dict[str, str], lease_s: float = LEASE_S, poll_s: float = 2.0,
                 tags: Sequence[str] = ("avsed-grid",), start_s: float = START_S,
                 log: Callable[[str], None] = print):
        self.deployments, self.lease_s, self.poll_s, self.tags = deployments, lease_s, poll_s, list(tags)
        self.start_s, self.log = start_s, log
        self._runs: dict[Any, tuple[Unit, GridSpec]] = {}
        self._since: dict[Any, tuple[str, float]] = {}  # (state type, when this process first saw it in it)
        self._claim_seen: dict[Any, float] = {}  # when this process last saw the run hold a claim
        self._idle_reported = False
        self.submitted = self.polls = self.most_in_flight = 0
        self.stuck: list[str] = []  # one line per flow run given up on as stuck (cancelled or marked crashed)
        self._grid = uuid.uuid4().hex  # this grid's submissions, for their idempotency keys

    def submit(self, unit: Unit, spec: GridSpec, attempt: int) -> Hashable:
        name = f"{unit.name}" + (f"-attempt{attempt + 1}" if attempt else "")
        # The idempotency key makes a submission repeated after a lost answer the same flow run, not a second one.
        run = _patiently(lambda: run_deployment(
            self.deployments[TRAIN_FLOW if unit.kind == "train" else EVALUATE_FLOW],
            parameters=unit_parameters(unit, spec), timeout=0, tags=self.tags, flow_run_name=name,
            idempotency_key=f"{self._grid}-{name}"))
        self._runs[run.id] = (unit, spec)
        self.submitted += 1
        self.most_in_flight = max(self.most_in_flight, len(self._runs))
        return run.id

    def wait(self, handles: Sequence[Hashable], timeout: float) -> list[tuple[Hashable, Outcome]]:
        deadline = time.monotonic() + timeout
        while True:
            finished = self._poll(handles)
            if finished or time.monotonic() >= deadline:
                return finished
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def _poll(self, handles: Sequence[Hashable]) -> list[tuple[Hashable, Outcome]]:
        self.polls += 1
        with get_client(sync_client=True) as client:
            runs = _patiently(lambda: client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(handles))), limit=len(handles)))
            finished = []
            for run in runs:
                outcome = outcome_of(run.state)
                if outcome is None:
                    stuck = self._stuck(run)
                    if stuck is None:
                        continue
                    why, state = stuck
                    _patiently(lambda: client.set_flow_run_state(run.id, state(message=f"avsed grid: {why}"),
                                                                 force=True))
                    self.stuck.append(f"{run.name}: {why}")
                    outcome = Outcome("lost", why)
                finished.append((run.id, outcome))
                self._forget(run.id)
            self._report_idle(runs)
            return finished

    def _forget(self, run_id) -> None:
        self._runs.pop(run_id, None)
        self._since.pop(run_id, None)
        self._claim_seen.pop(run_id, None)

    def _stuck(self, run) -> tuple[str, Callable] | None:
        """Why the flow run will not end by itself, and the state to give it (None while it may)."""
        now = time.monotonic()
        state = run.state
        kind = state.type.value if state is not None else "SCHEDULED"
        seen, since = self._since.get(run.id, (None, now))
        if seen != kind:
            self._since[run.id] = (kind, now)
            since = now
        if kind == "SCHEDULED":
            return None
        if kind == "PENDING":
            if now - since > self.start_s:
                return (f"{state.name} for {self.start_s:.0f} s without starting (its worker or its process is "
                        f"stuck)", Cancelling)
            return None
        unit, spec = self._runs[run.id]
        claims = [read_claim(d) for d in unit.run_dirs(spec.out_dir).values()]
        mine = [c for c in claims if c and c.get("flow_run") == str(run.id)]
        for claim in mine:
            if not holder_alive(claim, self.lease_s):
                return f"its worker died ({describe(claim)} is gone)", Crashed
        if mine:
            self._claim_seen[run.id] = now
        elif now - max(since, self._claim_seen.get(run.id, since)) > self.lease_s:
            return f"{state.name} for {self.lease_s:.0f} s without a claim on its runs (its worker is gone)", Crashed
        return None

    def _report_idle(self, runs) -> None:
        """One line when every unit in flight has waited Scheduled for `start_s` seconds: no worker takes them."""
        now = time.monotonic()
        waiting = [self._since.get(r.id, ("SCHEDULED", now)) for r in runs]
        idle = bool(runs) and all(kind == "SCHEDULED" and now - since > self.start_s for kind, since in waiting)
        if idle and not self._idle_reported:
            pools = ", ".join(sorted(set(self.deployments.values())))
            self.log(f"paper: {len(runs)} flow runs Scheduled for over {self.start_s:.0f} s and none running: is a "
                     f"worker polling the pool of {pools}? (they wait for one)")
        self._idle_reported = idle

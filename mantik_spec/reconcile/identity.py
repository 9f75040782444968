"""Run identity: what determines a run's result, the key that hashes it, and the two runs a plan compares.

The key covers the entry point's command template, the resolved parameters
and seed, the code identity (committed tree of ``code.paths``), data versions
and environment identity. It leaves out the experiment's name, the backend and
its resources: moving an experiment to another cluster does not redo science.

The inputs are written once, as the fields of :class:`Identity`: the key hashes them by name, :data:`INPUTS`
says how a plan names a change of each, and :mod:`mantik_spec.state.tags` keeps each in its tag (a test holds
both tables to the fields). A new input is a field, a row of :data:`INPUTS`, a tag, and its source in
:func:`identify`.

A :class:`DesiredRun` is a declared point with its identity; an :class:`ObservedRun` is a run record as
read back from its tags, and :func:`recorded_identity` the identity it recorded.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, fields

from ..spec.cost import LIMIT, Used
from ..spec.experiments import RunPoint
from ..vocab import FailureKind, Provenance, RunStatus

KEY_FORMAT = 1


@dataclass(frozen=True)
class Identity:
    command: str
    parameters: dict = field(hash=False)
    seed: int | None
    code: str
    data: dict = field(hash=False)  # name -> version
    environment: str

    def inputs(self) -> dict:
        """Each field's value by its name: what the key hashes."""
        return {each.name: getattr(self, each.name) for each in fields(self)}

    def canonical(self) -> str:
        return json.dumps(
            {"format": KEY_FORMAT, **self.inputs()}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )

    @functools.cached_property
    def key(self) -> str:
        """sha256 hex of :meth:`canonical`; computed once (the planner asks for it several times a run)."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()


@dataclass(frozen=True)
class Input:
    """An :class:`Identity` field and the reason a plan gives when it differs from the point's last run.

    ``{old}`` and ``{new}`` are the two values, shortened; a mapping differs entry by entry, each named by
    ``{name}``; the code's reason names the changed files and the commits (``{files}``, ``{was}``, ``{now}``),
    not the trees. None: never named."""

    name: str
    changed: str | None


INPUTS = (  # in the order a plan names them
    Input("command", "entry point command changed"),
    Input("parameters", "parameter {name} changed ({old} → {new})"),
    Input("seed", None),  # the point id names the seed: the last run of a point had the same
    Input("code", "code changed ({files}{was}..{now})"),
    Input("data", "data.{name} changed ({old} → {new})"),
    Input("environment", "environment changed ({old} → {new})"),
)


@dataclass(frozen=True)
class DesiredRun:
    """A declared run point with its identity attached."""

    point: RunPoint
    identity: Identity
    # a digest of what prepares the run without entering its key (its environment's definition, its backend's
    # modules, setup lines and resources): a changed one lets a point whose runs failed try again
    setup: str = ""

    @property
    def key(self) -> str:
        return self.identity.key


@dataclass
class ObservedRun:
    """A run record as observed: MLflow's own fields plus the decoded ``mantik.*`` tags."""

    run_id: str
    experiment_id: str
    status: RunStatus
    run_key: str
    point_id: str
    attempt: int
    backend: str
    job_id: str | None
    commit: str
    code: str
    command: str
    parameters: dict
    data: dict
    environment: str
    start_time: int | None  # ms since the epoch, as MLflow keeps it
    end_time: int | None
    failure: str | None = None  # the failure text, for people
    seed: int | None = None
    experiment: str = ""
    entry_point: str = ""
    metrics: dict = field(default_factory=dict)
    adopted_job: bool = False  # job id found on the backend, not yet recorded in MLflow
    failure_kind: FailureKind | None = None  # None: not failed, or failed for a reason nobody recorded
    cost_node_hours: float | None = None  # the node-hours recorded at submission: nodes x time limit, at most
    used_node_hours: float | None = None  # what the ended run used, recorded after it ended (used_source says how)
    used_source: str = ""  # "sacct" (the site's accounting) or "limit" (nodes x time limit, at most)
    setup: str = ""  # DesiredRun.setup when it was submitted; "" on records older than that tag
    scratch: bool = False  # submitted from a snapshot of the working tree (apply --scratch), on no branch
    job_started: int | None = None  # ms since the epoch its job started running (tag mantik.started): None unknown
    tracking: str = ""  # how its job recorded: "online", "offline" (to its journal), "" when not (yet) known
    journal_synced: bool = False  # its job ended and its journal, if any, was uploaded whole: never read again
    # provenance (mantik_spec.state.provenance): a digest of the tags written at intent time, the signatures the
    # record carries, and what checking them under this process's signing key found
    intent_digest: str = ""
    intent_signature: str = ""
    end_signature: str = ""
    provenance: Provenance = field(default=Provenance.UNCHECKED, compare=False)  # a verdict, not the record

    def __post_init__(self) -> None:
        self.status = RunStatus(self.status)
        if self.failure_kind is not None:
            self.failure_kind = FailureKind(self.failure_kind)
        self.provenance = Provenance(self.provenance)

    @property
    def live(self) -> bool:
        return RunStatus(self.status).live

    @property
    def used(self) -> Used | None:
        """What the ended run used, as recorded after it ended; None while nothing is recorded."""
        return None if self.used_node_hours is None else Used(self.used_node_hours, self.used_source or LIMIT)


def recorded_identity(run: ObservedRun) -> Identity:
    """The identity inputs an observed run recorded (its key should be their hash): its fields of the same names."""
    return Identity(**{each.name: getattr(run, each.name) for each in fields(Identity)})


def identify(
    point: RunPoint, code: str, data: dict[str, str], environments: dict[str, str], setup: str = ""
) -> DesiredRun:
    identity = Identity(
        command=point.command_template,
        parameters=dict(point.parameters),
        seed=point.seed,
        code=code,
        data={name: data.get(name, "") for name in point.data},
        environment=environments.get(point.environment, "") if point.environment else "",
    )
    return DesiredRun(point, identity, setup)

"""What one run costs against an allocation: the time limits the backends' resources declare, read as the
schedulers read them, and the node-, core- and GPU-hours of one run at that limit. Plain data, no I/O."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def unicore_seconds(text: str | int) -> float:
    """A UNICORE duration (``90``, ``30s``, ``90m``, ``12h``, ``14d``) in seconds; ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if not match:
        raise ValueError(f"{text!r} is not a duration")
    return float(match.group(1)) * SECONDS[match.group(2)]


def slurm_minutes(text: str | int) -> int | None:
    """A Slurm time limit in minutes as sbatch reads it (Slurm's ``time_str2mins``): MINUTES, MINUTES:SECONDS,
    HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS, seconds rounded up to a
    minute; None for UNLIMITED, INFINITE or 0 (no limit, as sbatch reads a zero). ValueError for anything else."""
    value = str(text).strip()
    if value.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise ValueError(f"{value!r} is not a Slurm time limit")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    assert first is not None  # the pattern requires it
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = first, second or 0, third or 0
    elif third is not None:  # HH:MM:SS
        hours, minutes, seconds = first, second or 0, third
    else:  # MINUTES, MINUTES:SECONDS
        hours, minutes, seconds = 0, first, second or 0
    total = ((days or 0) * 24 + hours) * 60 + minutes + math.ceil(seconds / 60)
    return total or None


@dataclass(frozen=True)
class RunCost:
    """One run's cost at its time limit: ``hours`` None when no limit is declared (``unknown`` says why);
    ``free`` for a backend that costs nothing against an allocation (this machine)."""

    nodes: int = 1
    hours: float | None = None
    cores: int | None = None  # per run, where the resources say so
    gpus: int | None = None
    free: bool = False
    unknown: str = ""

    @property
    def node_hours(self) -> float | None:
        if self.free:
            return 0.0
        return None if self.hours is None else self.nodes * self.hours

    @property
    def core_hours(self) -> float | None:
        return None if self.free or self.hours is None or self.cores is None else self.cores * self.hours

    @property
    def gpu_hours(self) -> float | None:
        return None if self.free or self.hours is None or self.gpus is None else self.gpus * self.hours


FREE = RunCost(nodes=0, free=True)


def gres_gpus(gres: str | None) -> int | None:
    """GPUs per node a ``--gres`` value asks for (gpu:4, gpu:a100:4, gpu); None when it names none."""
    for item in (gres or "").split(","):
        parts = item.split(":")
        if parts[0] == "gpu":
            return int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return None


LIMIT = "limit"  # a usage's source when no accounting answered: nodes x time limit, an upper bound


@dataclass(frozen=True)
class Used:
    """What an ended run used of the allocation, in node-hours, and where that figure comes from: the site's
    accounting (``sacct``: elapsed time x allocated nodes), or :data:`LIMIT` (nodes x time limit, as recorded
    at submission: at most). ``billing_hours``: elapsed time x the job's billing units, where the accounting
    says them (Slurm's ``billing`` TRES: what a site with ``TRESBillingWeights`` charges), else None."""

    node_hours: float
    source: str
    billing_hours: float | None = None

    @property
    def measured(self) -> bool:
        return self.source != LIMIT


@dataclass(frozen=True)
class Allocation:
    """What a site says is left of the allocation a backend's jobs are charged to.

    ``left`` and ``granted`` (None: not said) are in ``unit`` (``node-hours``, ``core-hours``, or the site's own
    word such as ``core-h``); ``source`` names the command or service that said it (``sshare``, ``UNICORE``);
    ``fetched`` is when this process (or the cached answer's) asked it, in seconds since the epoch."""

    left: float
    unit: str
    source: str
    fetched: float
    granted: float | None = None
    account: str = ""

    def to_json(self) -> dict:
        return {
            "left": self.left,
            "granted": self.granted,
            "unit": self.unit,
            "source": self.source,
            "account": self.account or None,
            "fetched": self.fetched,
        }

    @classmethod
    def from_json(cls, data: dict) -> Allocation:
        """The inverse of :meth:`to_json`; KeyError, TypeError or ValueError for anything else."""
        granted = data.get("granted")
        return cls(
            left=float(data["left"]),
            unit=str(data["unit"]),
            source=str(data["source"]),
            fetched=float(data["fetched"]),
            granted=None if granted is None else float(granted),
            account=str(data.get("account") or ""),
        )

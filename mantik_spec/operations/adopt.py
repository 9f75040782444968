"""``mantik adopt``: vouch for finished run records that carry no signature (written before signing began).

With ``MANTIK_SIGNING_KEY`` set, a FINISHED record counts as a result only when its end signature holds
(:mod:`..state.provenance`). Records written before the project set a key carry none: a person who has looked
at them (``mantik status`` marks them unverified) signs them here, once. Records that carry a signature that
does not hold were changed after mantik signed them, and records whose inputs do not hash to their key prove
nothing: both are refused, never signed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..reconcile.identity import ObservedRun, recorded_identity
from ..state.lock import project_lock
from ..state.provenance import SIGNING_KEY_VARIABLE, adoption_tags, signing_key
from ..vocab import Provenance, RunStatus
from .project import Project
from .runref import matching_runs, refuse_ambiguous


@dataclass(frozen=True)
class Adoption:
    """What ``adopt`` did with one named record: ``adopted`` true when it was signed; ``why`` otherwise."""

    run: ObservedRun
    adopted: bool
    why: str = ""


def adopt(project: Project, targets: list[str], lock_timeout: float = 0.0) -> list[Adoption]:
    """Sign the unsigned FINISHED records of the named experiments or runs (run id, job id or point id).

    Raises :class:`UserError` without a signing key, or for a target that names no record."""
    if signing_key() is None:
        raise UserError(f"set {SIGNING_KEY_VARIABLE} (the project's signing key) to adopt runs")
    with project_lock(project.store, "adopt", lock_timeout):
        runs = project.store.observe()
        named = {t: matching_runs(runs, t) for t in targets if t not in project.spec.experiments}
        unknown = [t for t, found in named.items() if not found]
        if unknown:
            raise UserError(f"no experiment, run, job or point named {', '.join(unknown)}")
        for target, found in named.items():
            refuse_ambiguous(found, target, project.spec.project)
        chosen_ids = {r.run_id for found in named.values() for r in found}
        chosen = [r for r in runs if r.run_id in chosen_ids or r.experiment in targets]
        results = []
        for run in chosen:
            if run.status is not RunStatus.FINISHED or run.provenance is not Provenance.UNVERIFIED:
                continue  # only finished records count as results; verified ones need nothing
            if recorded_identity(run).key != run.run_key:
                results.append(Adoption(run, False, "its recorded inputs do not hash to its key"))
            elif run.intent_signature or run.end_signature:
                results.append(Adoption(run, False, "it carries a signature that does not hold: changed after signing"))
            else:
                project.store.set_tags(run.run_id, adoption_tags(run))
                results.append(Adoption(run, True))
    return results

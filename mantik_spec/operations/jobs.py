"""Job construction: a desired run becomes the backend's :class:`JobRequest`, and the tags of its run record.

The command in its declared environment (modules, venv, pre/post lines, Apptainer, ``srun``), where the job
finds its image and its data, and the variables it gets; beside it, what the new run's MLflow record carries
(:func:`run_tags`). ``apply`` and ``reproduce`` orchestrate (lock, plan, intent records, submission); this
module only builds what they record and submit.
"""

from __future__ import annotations

import getpass
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.base import Backend, JobRequest
from ..errors import UserError
from ..reconcile.identity import DesiredRun
from ..reconcile.plan import Action, PlannedRun
from ..spec.load import SPEC_FILE
from ..spec.model import Environment
from ..state.git import SCRATCH_REFS, CodeVersion
from ..state.tags import MlflowTag, Tag, identity_tags
from ..state.versions import UNPINNED
from ..templating import quote_path
from .project import Project


@dataclass(frozen=True)
class Submission:
    """What the runs of one apply (or one reproduce) share: the code version, where data is, extra tags."""

    code: CodeVersion
    data_root: Path  # where DVC-tracked data paths are, as the job sees them
    extra_tags: dict = field(default_factory=dict)

    def data_locations(self, want: DesiredRun, sources, remote: dict[str, str] | None = None) -> dict[str, str]:
        """Where the run finds each data source: the local path, or with ``remote`` (for backends that
        cannot see this machine) the DVC remote's location of that path's version."""

        def location(source) -> str:
            if not source.path:
                return source.url
            return remote[source.path] if remote is not None else str(self.data_root / source.path)

        return {name: location(sources[name]) for name in want.point.data}


def refuse_unsendable_images(project: Project, starts) -> None:
    """A local image a backend would have to copy for every run, but does not send (Slurm over SSH)."""
    for want, _ in starts:
        backend = project.backend(want.point.backend)
        declared = project.spec.environments.get(want.point.environment) if want.point.environment else None
        _, inputs = image_for(project, declared, backend)
        if inputs and not backend.sends_inputs:
            raise UserError(
                f"environments.{want.point.environment}: the image {', '.join(inputs)} is on this machine, which "
                f"backend {want.point.backend} cannot see: put it on the cluster and give its absolute path"
            )


def remote_data(project: Project, context: Submission, starts, sources) -> dict[str, str]:
    """DVC-tracked data for backends that cannot see this machine must be in the DVC remote: checked with
    dvc's own API before anything is submitted (a run that cannot find its data only fails on the cluster)."""
    names_of: dict[str, dict[str, str]] = defaultdict(dict)  # path -> data source name -> version
    for want, _ in starts:
        if project.backend(want.point.backend).shares_files:
            continue
        for name in want.point.data:
            path = sources[name].path
            if path and (context.data_root / path).is_dir():
                raise UserError(
                    f"data.{name}: {path} is a directory, and a job on {want.point.backend} gets one location "
                    "per data source: track an archive of it with DVC, or give the data a url"
                )
            if path:
                names_of[path][name] = want.identity.data.get(name, "")
    if not names_of:
        return {}
    from ..state.dvcdata import remote_urls, unpushed

    missing, remote = unpushed(context.data_root, sorted(names_of))
    if missing:
        problems = [
            f"data.{name}: version {version.removeprefix('md5:')[:8]}… is not in remote '{remote}'"
            for path in missing
            for name, version in sorted(names_of[path].items())
        ]
        raise UserError("; ".join(problems) + "; run dvc push")
    return remote_urls(context.data_root, sorted(names_of))


def launches_with_srun(environment: Environment | None, in_allocation: bool) -> bool:
    """Whether the command starts through ``srun``: as Mantik did (``srun apptainer run``) for Apptainer
    environments on backends whose jobs hold an allocation (``Backend.launches_in_allocation``), unless the
    environment says otherwise; never on the local backend."""
    if environment is None or not in_allocation:
        return False
    return environment.srun if environment.srun is not None else bool(environment.apptainer)


SHELL_SYNTAX = re.compile(r"[$`\\]")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def in_environment(command: str, environment: Environment | None, image: str | None = None, srun: bool = False) -> str:
    """The command as it runs in its declared environment: modules, the venv and the pre-run lines,
    then the command (through ``srun`` when asked) inside the image (found at ``image``), then the
    post-run lines. With ``shell_expansion`` the image path and Apptainer options are written as given
    and variables holding shell syntax are exported in double quotes, so the job's shell expands them."""
    if environment is None:
        return f"srun {command}" if srun else command
    raw = environment.shell_expansion
    if environment.apptainer:
        if raw:
            options = list(environment.apptainer_options)
            path = environment.apptainer if image is None else shlex.quote(image)
        else:
            options = [shlex.quote(word) for option in environment.apptainer_options for word in shlex.split(option)]
            path = shlex.quote(image or environment.apptainer)
        words = [*(["srun"] if srun else []), "apptainer", "exec", *options, path]
        command = f"{' '.join(words)} sh -c {shlex.quote(command)}"
    elif srun:
        command = f"srun {command}"
    steps = []
    if raw:  # NAME="value", as UNICORE wrote Mantik's Variables into the batch script; the rest stay literal
        for name, value in environment.variables.items():
            if SHELL_SYNTAX.search(value) and VARIABLE_NAME.fullmatch(name):
                # $ and backquotes stay live; a backslash before a quote or at the end is doubled so that
                # no value can close the quotes and run the rest as commands
                escaped = re.sub(r'\\(?=")|\\$', r"\\\\", value).replace('"', '\\"')
                steps.append(f'export {name}="{escaped}"')
    if environment.modules:
        steps.append(f"module load {' '.join(shlex.quote(m) for m in environment.modules)}")
    if environment.venv:
        steps.append(_activation(environment.venv.rstrip("/") + "/bin/activate", raw))
    if not environment.pre_run and not environment.post_run:
        return " && ".join([*steps, command])
    # lines written by the user run as given, each in a group of its own: a comment or a `;` in one
    # cannot swallow or regroup the command
    return " && ".join([*steps, *(f"{{ {line}\n}}" for line in [*environment.pre_run, command, *environment.post_run])])


def _activation(script: str, raw: bool) -> str:
    """The line that activates a venv: quoted, but for a leading ``~/`` (the home directory where the job runs,
    which quotes would keep from the shell); with ``shell_expansion`` as written, as Mantik's batch script
    sourced ``{Python}/bin/activate``."""
    return f". {script}" if raw else f". {quote_path(script)}"


def image_for(
    project: Project, environment: Environment | None, backend: Backend
) -> tuple[str | None, dict[str, Path]]:
    """Where the job finds its Apptainer image, and the local file to send when the backend cannot see it."""
    if environment is None or not environment.apptainer or environment.image_is_remote:
        return None, {}
    local = project.root / environment.apptainer
    if backend.shares_files:
        return str(local), {}
    return environment.apptainer, {environment.apptainer: local}


def data_variable(name: str) -> str:
    return "MANTIK_DATA_" + "".join(c if c.isalnum() else "_" for c in name.upper())


def run_tags(project: Project, code: CodeVersion, want: DesiredRun, entry: PlannedRun) -> dict[str, str]:
    """What the record of a new run of ``want`` carries: its identity, where it came from, and MLflow's own
    tags so its UI shows the source (the intent record, written before :func:`job_request` is submitted)."""
    identity = want.identity
    tags = identity_tags(
        identity,
        project=project.spec.project,
        experiment=want.point.experiment,
        point_id=want.point.point_id,
        attempt=entry.next_attempt or 1,
        commit=code.commit,
        backend=want.point.backend,
    )
    tags |= {
        MlflowTag.GIT_COMMIT: code.commit,
        MlflowTag.SOURCE_NAME: code.repo_url or str(project.repo.root),
        MlflowTag.SOURCE_TYPE: "PROJECT",
        MlflowTag.ENTRY_POINT: want.point.entry_point,
        MlflowTag.PROJECT_BACKEND: project.spec.backends[want.point.backend].type,
        MlflowTag.USER: getpass.getuser(),
    }
    if want.setup:
        tags[Tag.SETUP] = want.setup
    node_hours = project.spec.backends[want.point.backend].run_cost().node_hours
    if node_hours is not None:  # what the run may use at most, summed against budgets (operations.project.plan_cost)
        tags[Tag.COST_NODE_HOURS] = repr(node_hours)
    tags[Tag.SPEC] = project.repo.prefix + SPEC_FILE  # apply refuses an uncommitted spec: COMMIT holds this one
    if code.scratch:
        tags[Tag.SCRATCH] = SCRATCH_REFS + code.commit
    unpinned = sorted(name for name, version in identity.data.items() if version == UNPINNED)
    if unpinned:  # the data may change under the same key: say so where the run is looked at
        tags[Tag.NOT_REPRODUCIBLE] = "unpinned data: " + ", ".join(unpinned)
    if code.repo_url:
        tags[MlflowTag.GIT_REPO_URL] = code.repo_url
    if code.branch:
        tags[MlflowTag.GIT_BRANCH] = code.branch
    if entry.run_id and entry.action is not Action.SUBMIT:
        tags[Tag.PREVIOUS_RUN] = entry.run_id
    return tags


def job_request(
    project: Project,
    context: Submission,
    want: DesiredRun,
    run_id: str,
    experiment_id: str,
    code_dir: Path,
    sources,
    remote: dict[str, str],
) -> JobRequest:
    """What the backend is asked to run for ``want``, recorded as MLflow run ``run_id``."""
    backend = project.backend(want.point.backend)
    locations = context.data_locations(want, sources, None if backend.shares_files else remote)
    declared = project.spec.environments.get(want.point.environment) if want.point.environment else None
    if declared is not None and declared.venv_is_relative:  # the project's venv, wherever the job runs from
        declared = declared.model_copy(update={"venv": declared.venv_location(project.root)})
    environment = {"MANTIK_RUN_KEY": want.key, **{data_variable(n): loc for n, loc in locations.items()}}
    if declared is not None:
        environment.update(declared.variables)
    if want.point.seed is not None:
        environment["MANTIK_SEED"] = str(want.point.seed)
    image, inputs = image_for(project, declared, backend)
    srun = launches_with_srun(declared, backend.launches_in_allocation)
    return JobRequest(
        run_id=run_id,
        run_key=want.key,
        point_id=want.point.point_id,
        command=in_environment(want.point.command(locations), declared, image, srun),
        code_dir=code_dir,
        tracking_uri=project.store.uri,
        experiment_id=experiment_id,
        group=want.point.experiment,
        environment=environment,
        inputs=inputs,
        tracking=project.spec.backends[want.point.backend].tracking,
        experiment_name=project.store.experiment_name(want.point.experiment),
    )

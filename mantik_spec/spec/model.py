"""The ``mantik.yaml`` data model.

Pydantic classes describe the format and produce the JSON Schema; they hold no
cross-references (those are checked in :mod:`mantik_spec.spec.checks`, where
every problem can be tied to a line).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from .cost import FREE, RunCost, gres_gpus, slurm_minutes, unicore_seconds

# pydantic scans every installed distribution's entry points for plugins as each model
# is built (~20 ms); mantik uses none, and `validate` runs on every commit. The switch is
# scoped to the models defined here and restored at the end of this module.
_PLUGIN_SWITCH = "PYDANTIC_DISABLE_PLUGINS"
_plugins_setting = os.environ.get(_PLUGIN_SWITCH)
os.environ[_PLUGIN_SWITCH] = "__all__"

SPEC_VERSION = 1
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
# an entry point's name, or a script's path in the project (scripts/train.py)
EntryPointName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$", max_length=1024)]
ScalarValue = bool | int | float | str
ParameterType = Literal["float", "int", "string", "bool", "path", "uri"]
Finding = tuple[tuple, str]  # (a path into the spec, a message): a problem the loader ties to its line
# How a job reaches the tracking store (mantik_spec.runner, docs/offline.md): directly, through a journal in its
# job directory that `mantik sync` uploads, or directly when a probe at job start reaches the store
TrackingMode = Literal["online", "offline", "auto"]
TRACKING_MODE_HELP = (
    "How jobs record to MLflow: online (directly), offline (a journal in the job directory, uploaded by "
    "`mantik sync`, plan and apply: for compute nodes without a route out), auto (online when the store "
    "answers within 5 s at job start, else offline)."
)


# What POSIX shells and execve accept as a variable name (no '=', no NUL, not empty, no leading digit)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_NAME, max_length=256)]


def credential_variable(*prefixes: str) -> AfterValidator:
    """A ``*_env`` field naming where a credential comes from may name only the variables kept for that kind of
    credential: a spec (a pull request's, say) decides which server the credential is sent to, so naming any
    other variable (``SSH_PRIVATE_KEY``, a CI deploy token) would send that secret there. Source: the trust
    model, docs/security.md."""

    def check(name: str) -> str:
        if not name.startswith(prefixes):
            kept = " or ".join(f"{prefix}*" for prefix in prefixes)
            raise ValueError(f"{name} is not a variable kept for this credential: name one called {kept}")
        return name

    return AfterValidator(check)


TrackingVariable = Annotated[EnvName, credential_variable("MLFLOW_TRACKING_", "MANTIK_TRACKING_")]
UnicoreVariable = Annotated[EnvName, credential_variable("MANTIK_UNICORE_")]
FirecrestVariable = Annotated[EnvName, credential_variable("MANTIK_FIRECREST_")]


def one_shell_line(value: str) -> str:
    """A line a shell runs as written: a line break would end it there and start another command."""
    if "\n" in value or "\r" in value:
        raise ValueError("one shell line each: no line breaks (write several items instead)")
    return value


# Shell lines written into a job script, a login-node command or a UNICORE job: each item one line
ShellLine = Annotated[str, AfterValidator(one_shell_line)]


class Strict(BaseModel):
    # strict: YAML already typed the values; "yes" must not quietly become True
    model_config = ConfigDict(extra="forbid", strict=True)


class Tracking(Strict):
    """Where runs are recorded. ``MLFLOW_TRACKING_URI`` overrides ``uri``."""

    uri: str = Field(
        "sqlite:///.mantik/mlflow.db",
        description="MLflow tracking URI; relative sqlite paths are taken from the project root.",
    )
    token_env: TrackingVariable | None = Field(
        None, description="Variable holding a bearer token, named MLFLOW_TRACKING_* or MANTIK_TRACKING_*."
    )
    username_env: TrackingVariable | None = Field(
        None, description="Variable holding the user name, named MLFLOW_TRACKING_* or MANTIK_TRACKING_*."
    )
    password_env: TrackingVariable | None = Field(
        None, description="Variable holding the password, named MLFLOW_TRACKING_* or MANTIK_TRACKING_*."
    )


class Code(Strict):
    paths: list[str] | None = Field(
        None,
        description="Files and directories whose committed content identifies the code "
        "(default: the whole tree except mantik.yaml and .mantik/).",
    )


class Parameter(Strict):
    type: ParameterType = "string"
    default: ScalarValue | None = None
    description: str | None = None
    # Set when an MLproject declares a type mantik does not check (`str`, `list[int]`, a misspelling):
    # MLflow passes such values on as text, so `type` is then "string"; `explain` shows what was written.
    declared_type: SkipJsonSchema[str | None] = None

    @property
    def shown_type(self) -> str:
        return self.declared_type or self.type


class EntryPoint(Strict):
    command: str = Field(
        ...,
        description="Command template; {name} is replaced by the parameter value, quoted for where it stands "
        "(bare, inside \"...\" or '...'): the program gets the value as given, never shell code.",
    )
    parameters: dict[Name, Parameter] = Field(
        default_factory=dict, description="Declared parameters; `lr: float` is short for `lr: {type: float}`."
    )

    # True for entry points read from an MLproject: MLflow allows parameters the command does not use, and
    # appends the ones it does not declare as --key value
    from_mlproject: SkipJsonSchema[bool] = False
    # True for a script file an experiment names as its entry point (train.py), run as `mlflow run -e` runs it
    script: SkipJsonSchema[bool] = False

    @field_validator("parameters", mode="before", json_schema_input_type=dict[Name, Parameter | ParameterType])
    @classmethod
    def _expand_shorthand(cls, value):
        if isinstance(value, dict):
            return {k: {"type": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


class DataSource(Strict):
    path: str | None = Field(None, description="A DVC-tracked file or directory in the repository.")
    url: str | None = Field(None, description="A remote location, pinned by version and/or sha256.")
    version: str | None = None
    sha256: str | None = None
    unpinned: bool = Field(False, description="Allow an unpinned url; its runs are not reproducible.")


class Environment(Strict):
    apptainer: str | None = Field(None, description="Apptainer image file or absolute remote path.")
    digest: str | None = Field(
        None, pattern=r"^sha256:[0-9a-f]{64}$", description="The image's sha256, for an image that is not here to hash."
    )
    apptainer_options: list[str] = Field(
        default_factory=list, description="Options for `apptainer exec`, one per item (e.g. --nv, -B /p/data)."
    )
    apptainer_remote: bool | None = Field(
        None,
        description="The image is a file on the cluster, not in the repository (default: true for absolute paths); "
        "a remote image is identified by `digest`, or by its path and `image_version`.",
    )
    image_version: str | None = Field(
        None,
        description="For an image on the cluster: a version you give it (a tag, a date); change it when the image "
        "changes. With the path it identifies the image in run keys (`digest` identifies it by content).",
    )
    srun: bool | None = Field(
        None,
        description="Start the command through `srun`, one task per task slot of the allocation (default: true "
        "for Apptainer environments on slurm and unicore backends, as Mantik did; false otherwise).",
    )
    shell_expansion: bool = Field(
        False,
        description="The job's shell expands `$VAR` and `$(...)` in the image path, `apptainer_options` and "
        "`variables`, as Mantik's batch script did (set for environments read from a Mantik config).",
    )
    venv: str | None = Field(
        None,
        description="Path of a Python virtual environment to activate: absolute or `~/...` where the job runs, or "
        "relative to the directory of mantik.yaml on the machine mantik runs on (for backends whose jobs see it).",
    )
    requirements: str | None = Field(None, description="Lock or requirements file identifying the environment.")
    modules: list[str] = Field(default_factory=list)
    variables: dict[EnvName, str] = Field(
        default_factory=dict, description="Environment variables of the run (names as a shell accepts them)."
    )
    pre_run: list[ShellLine] = Field(
        default_factory=list, description="Shell lines run on the compute node before the command."
    )
    post_run: list[ShellLine] = Field(
        default_factory=list, description="Shell lines run on the compute node after the command succeeded."
    )

    @field_validator("apptainer_options")
    @classmethod
    def _shell_words(cls, value):
        for option in value:
            try:
                shlex.split(option)
            except ValueError as exc:
                raise ValueError(f"{option!r}: {exc}") from None
        return value

    @property
    def venv_is_relative(self) -> bool:
        """Whether ``venv`` names a directory relative to the project (neither absolute, nor ``~``, nor, with
        ``shell_expansion``, starting with a shell variable)."""
        venv = self.venv
        if not venv or venv.startswith(("/", "~")):
            return False
        return not (self.shell_expansion and venv.startswith("$"))

    def venv_location(self, project_root: Path) -> str | None:
        """Where the job finds the venv: a relative ``venv`` is taken from the directory of mantik.yaml
        (``project_root``), as the workdir of a Slurm backend on this machine is, and made absolute; the job's
        own directory holds only the committed tree, never a venv. Others as written."""
        if not self.venv or not self.venv_is_relative:
            return self.venv
        return os.path.normpath(Path(project_root) / self.venv)

    @property
    def image_is_remote(self) -> bool:
        """Whether the image is a file on the cluster rather than one to send from here."""
        if self.apptainer_remote is not None:
            return self.apptainer_remote
        return bool(self.apptainer) and self.apptainer.startswith("/")


class Budget(Strict):
    """A limit on what this spec's runs may spend, checked by `plan` (a warning) and `apply` (a refusal)."""

    node_hours: float = Field(
        ...,
        gt=0,
        description="Node-hours (nodes x time limit per run) that the recorded runs and the plan together may "
        "reach; the recorded runs count at their time limit, an upper bound.",
    )


class LocalConfig(Strict):
    """Detached processes on this machine."""

    # the fields that prepare a run without entering its key: when one changes, a point whose runs failed
    # (a module list, a setup line, too little time or memory) is tried again (mantik_spec.reconcile.planner)
    SETUP_FIELDS: ClassVar[tuple[str, ...]] = ()
    # jobs are processes of the machine mantik runs on: a CI runner ends them with its job
    PROCESSES_OF_THIS_MACHINE: ClassVar[bool] = True

    def sees_this_machine(self) -> bool:
        """Whether jobs see the files of the machine mantik runs on (the backend's ``shares_files``)."""
        return True

    type: Literal["local"]
    max_parallel: int = Field(1, ge=1, le=1024, description="Runs executing at once; the rest wait in a queue.")
    tracking: TrackingMode = Field("online", description=TRACKING_MODE_HELP)
    environment: str | None = Field(None, description="Default environment for runs on this backend.")

    def problems(self) -> Iterator[Finding]:
        """What this config holds that the backend cannot use, as (path below the backend, message); the
        loader's whole-spec pass reports them at their line (:func:`mantik_spec.spec.checks.semantic`)."""
        return iter(())  # the fields' own types say everything

    def run_cost(self) -> RunCost:
        """One run's cost against an allocation: nothing, on this machine."""
        return FREE


SLURM_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{1,2}(:\d{1,2})?)?|\d+(:\d{1,2}(:\d{1,2})?)?|UNLIMITED|INFINITE)$")
SLURM_SIZE = re.compile(r"^\d+[KMGT]?$")
SLURM_WORD = r"^[A-Za-z0-9_.,:=+-]+$"  # partition, account, qos, gres: nothing a shell or #SBATCH line could misread
SBATCH_SHAPE = re.compile(r"^(--time|--nodes)(=|\s|$)|^-[tN]")  # what overrides resources.time and nodes
DURATION = re.compile(r"^(\d+(\.\d+)?)(s|m|h)?$")


def slurm_time(value: str | int) -> str:
    text = str(value)
    if not SLURM_TIME.match(text):
        raise ValueError(
            f"{text!r} is not a Slurm time: use MINUTES, MM:SS, HH:MM:SS or D-HH:MM:SS (e.g. 90, 90:00, 1-00:00:00)"
        )
    return text


def slurm_size(value: str | int) -> str:
    text = str(value)
    if not SLURM_SIZE.match(text):
        raise ValueError(f"{text!r} is not a size: a whole number with an optional K, M, G or T (e.g. 64G, 4000M)")
    return text


def duration_seconds(value: str | int | float) -> float:
    match = DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration: use seconds or a number with s, m or h (e.g. 30s, 5m)")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(3)]


SlurmTime = Annotated[
    str | int, AfterValidator(slurm_time), Field(json_schema_extra={"examples": ["90:00", "1-00:00:00"]})
]
SlurmSize = Annotated[str | int, AfterValidator(slurm_size), Field(json_schema_extra={"examples": ["64G", "4000M"]})]
SlurmWord = Annotated[str, Field(pattern=SLURM_WORD, max_length=256)]
WebUrl = Annotated[str, Field(pattern=r"^https?://\S+$")]  # an http(s) endpoint: a REST API, a token URL
ModuleName = Annotated[str, Field(pattern=r"^[^\s;&|`$<>]+$")]  # one word for `module load`: no shell syntax


def _duration(value: str | int | float) -> str | int | float:
    duration_seconds(value)  # raises the one message for every duration field
    return value


# seconds, or a number with s, m or h: timeouts and poll intervals (duration_seconds reads them)
Duration = Annotated[str | int | float, AfterValidator(_duration), Field(json_schema_extra={"examples": ["30s", "5m"]})]


class SlurmResources(Strict):
    nodes: int | None = Field(None, ge=1)
    ntasks: int | None = Field(None, ge=1)
    ntasks_per_node: int | None = Field(None, ge=1)
    cpus_per_task: int | None = Field(None, ge=1)
    mem: SlurmSize | None = Field(None, description="Memory per node, as Slurm writes it (64G).")
    mem_per_cpu: SlurmSize | None = None
    gpus: int | None = Field(None, ge=0)
    gres: SlurmWord | None = Field(None, description="Generic resources, e.g. gpu:a100:4.")
    time: SlurmTime | None = Field(None, description="Time limit: MINUTES, HH:MM:SS or D-HH:MM:SS.")


class SSHConnection(Strict):
    """How to reach a login node. ssh's own configuration (~/.ssh/config: Host aliases, ProxyJump,
    IdentityFile, User), the SSH agent and known_hosts apply as for `ssh` itself."""

    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=255)] = Field(
        ..., description="Host name, or a Host alias from ~/.ssh/config."
    )
    port: int | None = Field(None, ge=1, le=65535)
    user: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] | None = Field(
        None, description="Default: $MANTIK_SSH_USERNAME when set (as in Mantik), else ~/.ssh/config's User."
    )
    identity_file: str | None = Field(
        None,
        description="Private key file; default: $MANTIK_SSH_PRIVATE_KEY when set (a path or the key itself), "
        "else ssh's own choice (agent, IdentityFile).",
    )
    known_hosts_file: str | None = Field(
        None, description="Default: ~/.ssh/known_hosts. Unknown host keys are refused."
    )
    config_file: str | None = Field(None, description="An ssh config file to use instead of ~/.ssh/config.")
    connect_timeout: int = Field(15, ge=1, le=600, description="Seconds to wait for the connection.")


class BatchConfig(Strict):
    """What the Slurm and FirecREST backends share: Slurm batch scripts, job arrays, where jobs go and what
    they get (:mod:`mantik_spec.backends.batch`)."""

    SETUP_FIELDS: ClassVar[tuple[str, ...]] = ("partition", "qos", "resources", "modules", "setup", "python", "template")
    PROCESSES_OF_THIS_MACHINE: ClassVar[bool] = False  # a scheduler's jobs outlive the command that submits them

    def sees_this_machine(self) -> bool:
        """Whether jobs see the files of the machine mantik runs on (the backend's ``shares_files``)."""
        return False

    # declared by each backend; named here first so that they lead in the schema and the reference
    type: str
    config: str | None = None
    partition: SlurmWord | None = None
    account: SlurmWord | None = None
    qos: SlurmWord | None = None
    resources: SlurmResources = Field(default_factory=SlurmResources)
    modules: list[ModuleName] = Field(
        default_factory=list, description="Environment modules loaded before the run (module load NAME)."
    )
    setup: list[ShellLine] = Field(
        default_factory=list, description="Shell lines run before the run starts (e.g. source venv/bin/activate)."
    )
    array: bool = Field(True, description="Submit the missing points of an experiment as one job array.")
    max_array_size: int = Field(1000, ge=1, le=100_000, description="Split larger arrays (the cluster's MaxArraySize).")
    template: str | None = Field(
        None, description="A Jinja2 batch-script template in the repository overriding the default."
    )
    python: str = Field(
        "python3", description="The Python on the compute nodes that runs the in-job runner (needs mlflow)."
    )
    poll_interval: Duration  # each backend's default and words
    environment: str | None = Field(None, description="Default environment for runs on this backend.")
    tracking: TrackingMode = Field("auto", description=TRACKING_MODE_HELP)
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of committed files not staged (*.ckpt, data/)."
    )

    budget: Budget | None = Field(None, description="Node-hours the runs on this backend may spend.")

    def run_cost(self) -> RunCost:
        """One run's cost at its time limit (``resources.time``): nodes x time; cores where ``ntasks`` or
        ``cpus_per_task`` say, GPUs where ``gpus`` or a gpu ``gres`` (per node) say."""
        res = self.resources
        nodes = res.nodes or 1
        tasks = res.ntasks or (res.ntasks_per_node * nodes if res.ntasks_per_node else None)
        cores = None if tasks is None and res.cpus_per_task is None else (tasks or 1) * (res.cpus_per_task or 1)
        per_node = gres_gpus(res.gres)
        gpus = res.gpus if res.gpus is not None else (per_node * nodes if per_node is not None else None)
        minutes = slurm_minutes(res.time) if res.time is not None else None
        if minutes is None:
            why = "no time limit (resources.time)" if res.time is None else f"time limit {res.time}"
            return RunCost(nodes, None, cores, gpus, unknown=why)
        return RunCost(nodes, minutes / 60, cores, gpus)

    def problems(self) -> Iterator[Finding]:
        """sbatch options and values that would break the batch script or that sbatch refuses (see
        :meth:`LocalConfig.problems`)."""
        from .checks import slurm_options  # checks reads this model: imported when asked, not at load

        return slurm_options((), self)


class SlurmConfig(BatchConfig):
    """Batch jobs on a Slurm cluster, submitted as job arrays from its login node (or over SSH to it)."""

    type: Literal["slurm"]
    config: str | None = Field(
        None,
        description="A Mantik compute-backend config with SSH (YAML or JSON) read as is: SSH, Resources, "
        "Environment, Exclude. Keys set here override it.",
    )
    sbatch_args: list[Annotated[str, Field(pattern=r"^--?[A-Za-z][^\n]*$")]] = Field(
        default_factory=list, description="Further sbatch options, one per item (e.g. --constraint=gpu)."
    )
    workdir: str = Field(
        ".mantik/slurm",
        description="Directory on the cluster's shared filesystem for staged code and run directories "
        "(relative paths are taken from the project root; over SSH, from the remote home).",
    )
    poll_interval: Duration = Field("5s", description="Never ask Slurm for job states more often than this.")
    ssh: SSHConnection | None = Field(
        None, description="Reach the login node over SSH (from a laptop or a CI runner) instead of running there."
    )

    def sees_this_machine(self) -> bool:
        """Jobs see this machine's files when mantik runs on the login node (no ``ssh``), whose filesystem the
        compute nodes share."""
        return self.ssh is None

    def run_cost(self) -> RunCost:
        """As :meth:`BatchConfig.run_cost`; unknown when ``sbatch_args`` set the time limit or the nodes, which
        then override ``resources``."""
        cost = super().run_cost()
        if any(SBATCH_SHAPE.match(item) for item in self.sbatch_args):
            return RunCost(cost.nodes, None, cost.cores, cost.gpus, unknown="sbatch_args set --time or --nodes")
        return cost


UNICORE_RUNTIME = re.compile(r"^\d+[smhd]?$")


def unicore_runtime(value: str | int) -> str:
    text = str(value)
    if not UNICORE_RUNTIME.match(text):
        raise ValueError(f"{text!r} is not a runtime: seconds, or a number with one unit s, m, h or d (e.g. 12h)")
    return text


UnicoreRuntime = Annotated[str | int, AfterValidator(unicore_runtime), Field(json_schema_extra={"examples": ["12h"]})]


class UnicoreCredentials(Strict):
    """Environment variables holding the credentials (never the credentials themselves), named MANTIK_UNICORE_*."""

    username_env: UnicoreVariable = "MANTIK_UNICORE_USERNAME"
    password_env: UnicoreVariable = "MANTIK_UNICORE_PASSWORD"
    token_env: UnicoreVariable | None = Field(
        None, description="Variable holding an OIDC or bearer token; used instead of username and password."
    )


class UnicoreResources(Strict):
    queue: SlurmWord | None = Field(None, description="Batch queue (partition); the site's default when unset.")
    nodes: int | None = Field(None, ge=1)
    runtime: UnicoreRuntime | None = Field(None, description="Wall-clock limit: seconds or e.g. 90m, 12h, 1d.")
    total_cpus: int | None = Field(None, ge=1)
    cpus_per_node: int | None = Field(
        None, ge=1, description="CPUs per node; a Slurm site's adapter makes it --ntasks-per-node."
    )
    gpus_per_node: int | None = Field(
        None, ge=0, description="Sent as GPUsPerNode, or GPUS where the site names it so."
    )
    memory: SlurmSize | None = Field(None, description="Memory per node (64G), sent as MemoryPerNode.")
    reservation: SlurmWord | None = None
    node_constraints: SlurmWord | None = None
    qos: SlurmWord | None = None


class UnicoreConfig(Strict):
    """Batch jobs at a UNICORE site (e.g. JUWELS, JURECA), submitted over its REST API."""

    SETUP_FIELDS: ClassVar[tuple[str, ...]] = ("resources", "login_precommand", "login_postcommand", "python", "template")
    PROCESSES_OF_THIS_MACHINE: ClassVar[bool] = False

    def sees_this_machine(self) -> bool:
        """Whether jobs see the files of the machine mantik runs on (the backend's ``shares_files``)."""
        return False

    type: Literal["unicore"]
    config: str | None = Field(
        None,
        description="A Mantik compute-backend config (YAML or JSON) read as is: UnicoreApiUrl, Resources, "
        "Environment, Exclude. Keys set here override it.",
    )
    url: WebUrl | None = Field(
        None, description="The site's REST endpoint, e.g. https://host:9112/JUWELS/rest/core."
    )
    credentials: UnicoreCredentials = Field(default_factory=UnicoreCredentials)
    project: SlurmWord | None = Field(
        None, description="Compute budget account; default: the variable MANTIK_COMPUTE_BUDGET_ACCOUNT."
    )
    resources: UnicoreResources = Field(default_factory=UnicoreResources)
    environment: str | None = Field(None, description="Default environment for runs on this backend.")
    tracking: TrackingMode = Field("auto", description=TRACKING_MODE_HELP)
    login_precommand: list[ShellLine] = Field(
        default_factory=list, description="Shell lines run on the login node before the job (joined with &&)."
    )
    login_postcommand: list[ShellLine] = Field(
        default_factory=list, description="Shell lines run on the login node after the job (joined with &&)."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns of committed files not sent with the job (*.ckpt, data/)."
    )
    storage: SlurmWord | None = Field(
        None,
        description="The UNICORE storage where staged code and images are kept; default: HOME, or the user's "
        "one home storage (NAME-Home) among the site's storages.",
    )
    staging_dir: str = Field("mantik-staging", description="Directory in that storage for staged code and images.")
    template: str | None = Field(
        None, description="A Jinja2 template of the JSON job description in the repository overriding the default."
    )
    python: str = Field("python3", description="The Python on the compute nodes that runs the in-job runner.")
    tls_verify: bool | str = Field(
        True, description="Check the site's TLS certificate (true), skip the check (false), or a CA bundle path."
    )
    timeout: Duration = Field("60s", description="How long to wait for one answer from the site.")
    poll_interval: Duration = Field("10s", description="Never ask the site for job states more often.")
    job_lifetime: UnicoreRuntime = Field(
        "14d",
        description="How long the site keeps each job and its files (default there: one day), so that runs "
        "that cannot report are closed with their output; the site may cap it.",
    )

    budget: Budget | None = Field(None, description="Node-hours the runs on this backend may spend.")

    @field_validator("tls_verify")
    @classmethod
    def _not_a_yaml11_boolean(cls, value):
        # YAML 1.1 read `tls_verify: no` as false; as text it would name a CA bundle file "no"
        if isinstance(value, str) and value.lower() in ("y", "yes", "n", "no", "on", "off"):
            raise ValueError(f"{value!r} is not a boolean: write true or false (or ./{value} for a CA bundle file)")
        return value

    def run_cost(self) -> RunCost:
        """One run's cost at its time limit (``resources.runtime``): nodes (default 1) x runtime; cores from
        ``total_cpus`` or ``cpus_per_node`` x nodes, GPUs from ``gpus_per_node`` x nodes."""
        res = self.resources
        nodes = res.nodes or 1
        cores = res.total_cpus or (res.cpus_per_node * nodes if res.cpus_per_node else None)
        gpus = res.gpus_per_node * nodes if res.gpus_per_node is not None else None
        if res.runtime is None:
            return RunCost(nodes, None, cores, gpus, unknown="no time limit (resources.runtime)")
        return RunCost(nodes, unicore_seconds(res.runtime) / 3600, cores, gpus)

    def problems(self) -> Iterator[Finding]:
        """The site's URL, unless a Mantik config gives it (see :meth:`LocalConfig.problems`)."""
        if not self.url and not self.config:
            yield (), "url is required (or config: a Mantik compute-backend config with UnicoreApiUrl)"


class FirecrestCredentials(Strict):
    """Environment variables holding the OIDC client's credentials (never the credentials themselves), named
    MANTIK_FIRECREST_*."""

    client_id_env: FirecrestVariable = "MANTIK_FIRECREST_CLIENT_ID"
    client_secret_env: FirecrestVariable = "MANTIK_FIRECREST_CLIENT_SECRET"


class FirecrestConfig(BatchConfig):
    """Batch jobs on a Slurm cluster behind FirecREST (API v2, e.g. CSCS Alps), submitted as job arrays."""

    type: Literal["firecrest"]
    config: str | None = Field(
        None,
        description="A Mantik compute-backend config (YAML or JSON) read as is: Firecrest (ApiUrl, TokenUrl, "
        "Machine), Resources, Environment, Exclude. Keys set here override it.",
    )
    url: WebUrl | None = Field(
        None, description="The FirecREST API, e.g. https://api.cscs.ch/ml/firecrest/v2."
    )
    token_url: WebUrl | None = Field(
        None, description="The OIDC token endpoint of the client-credentials flow."
    )
    machine: SlurmWord | None = Field(None, description="The system's name in FirecREST (e.g. daint, clariden).")
    credentials: FirecrestCredentials = Field(default_factory=FirecrestCredentials)
    workdir: Annotated[str, Field(pattern=r"^/[^\n]*$")] | None = Field(
        None, description="Absolute directory on the cluster for staged code and run directories."
    )
    account: SlurmWord | None = Field(
        None, description="Compute budget account; default: the variable MANTIK_COMPUTE_BUDGET_ACCOUNT."
    )
    reservation: SlurmWord | None = None
    constraint: SlurmWord | None = None
    setup: list[ShellLine] = Field(default_factory=list, description="Shell lines run before the run starts.")
    python: str = Field("python3", description="The Python on the compute nodes that runs the in-job runner.")
    tls_verify: bool | str = Field(
        True, description="Check the API's TLS certificate (true), skip the check (false), or a CA bundle path."
    )
    timeout: Duration = Field("60s", description="How long to wait for one answer from FirecREST.")
    poll_interval: Duration = Field("10s", description="Never ask FirecREST for job states more often.")

    def problems(self) -> Iterator[Finding]:
        """The API, token URL and machine, unless a Mantik config gives them (see :meth:`LocalConfig.problems`)."""
        for key, hint in (("url", "ApiUrl"), ("token_url", "TokenUrl"), ("machine", "Machine")):
            if not getattr(self, key) and not self.config:
                yield (), f"{key} is required (or config: a Mantik config with Firecrest.{hint})"


# every backend config, chosen by `type:` (the registry in mantik_spec/backends/__init__.py maps each to its class)
BackendConfig = Annotated[LocalConfig | SlurmConfig | UnicoreConfig | FirecrestConfig, Field(discriminator="type")]

GridValue = ScalarValue | list[ScalarValue]


class Metric(Strict):
    name: str = Field(..., min_length=1, description="An MLflow metric the runs log, e.g. val_loss.")
    goal: Literal["min", "max"] = Field(..., description="Whether lower or higher values are better.")


class Experiment(Strict):
    extends: Name | None = Field(None, description="Inherit every field not set here from another experiment.")
    entry_point: EntryPointName | None = Field(
        None,
        description="A declared entry point, or a script file of the project (train.py, scripts/run.sh, fit.R) run "
        "as `mlflow run -e` runs it: python, $SHELL or Rscript, with the parameters as --name value.",
    )
    backend: Name | None = None
    environment: Name | None = None
    data: list[Name] | None = None
    parameters: dict[Name, GridValue] | None = Field(
        None, description="Parameter values; a list is a grid axis (the runs are its cartesian product)."
    )
    seeds: Annotated[int, Field(ge=1, le=10_000)] | list[int] | None = Field(
        None,
        description="A count (seeds 0..N-1) or an explicit list of seeds. Each run gets its seed as the `seed` "
        "parameter ({seed} in the command) and as the environment variable MANTIK_SEED.",
    )
    seed_from_env: bool | None = Field(
        None,
        description="The program reads its seed from $MANTIK_SEED itself, so `seeds` needs no {seed} in the command.",
    )
    retries: int | None = Field(None, ge=0, le=100, description="Resubmissions allowed after a failed attempt.")
    suspend: bool | None = Field(None, description="Submit nothing new for this experiment.")
    metric: Metric | None = Field(
        None,
        description="The metric that ranks the points in `mantik show`, by the mean over their seeds when "
        "`seeds` is set (not part of any run key).",
    )


class Model(Strict):
    """A registered model of MLflow's model registry whose alias points at the best run of an experiment
    (docs/models.md). Its key under ``models:`` is the registered model's name."""

    experiment: Name = Field(..., description="The experiment of this spec whose runs compete.")
    metric: str = Field(..., min_length=1, max_length=250, description="A metric the runs log; its last value counts.")
    goal: Literal["minimize", "maximize"] = Field(..., description="Whether lower or higher values win.")
    artifact: str = Field(
        ..., min_length=1, max_length=1024, description="The artifact path in the winning run that holds the model."
    )
    alias: str = Field(..., description="The registry alias that points at the best version, e.g. champion.")
    min_improvement: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None,
        description="Move the alias only when the new winner beats the version it points at by at least this "
        "much (in the metric's units).",
    )


class Spec(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, title="mantik.yaml")

    version: Literal[1] = Field(SPEC_VERSION, description="The format version of this file.")
    project: Name = Field(..., description="The project's name; its MLflow experiments are named PROJECT/EXPERIMENT.")
    tracking: Tracking = Field(default_factory=Tracking, description="Where runs are recorded.")
    code: Code = Field(default_factory=Code, description="What identifies the code of a run.")
    mlproject: str | None = Field(
        None,
        description="An MLflow MLproject file whose entry points are read as is; entry_points here add to them.",
    )
    entry_points: dict[Name, EntryPoint] = Field(default_factory=dict, description="Commands with declared parameters.")
    data: dict[Name, DataSource] = Field(
        default_factory=dict, description="Data sources; their versions enter run keys."
    )
    environments: dict[Name, Environment] = Field(
        default_factory=dict, description="Software environments; their identities enter run keys."
    )
    backends: dict[Name, BackendConfig] = Field(
        default_factory=lambda: {"local": LocalConfig(type="local")},
        description="Where runs execute, chosen by `type`.",
    )
    experiments: dict[Name, Experiment] = Field(
        default_factory=dict, description="Entry points times parameter grids: the runs that should exist."
    )
    max_runs: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="The most run points all experiments together may declare; a larger grid is refused "
        "(counted before it is expanded) until this is raised.",
    )
    models: dict[str, Model] = Field(
        default_factory=dict,
        description="Registered models of MLflow's model registry, by name: plan and apply keep each one's alias "
        "on the best finished run of an experiment (docs/models.md).",
    )
    budget: Budget | None = Field(
        None,
        description="Node-hours all runs of this spec may spend together; a backend's own `budget` limits its runs "
        "further. `apply` refuses a plan that would exceed one (docs/cost.md).",
    )


if _plugins_setting is None:
    del os.environ[_PLUGIN_SWITCH]
else:
    os.environ[_PLUGIN_SWITCH] = _plugins_setting

"""The ``mantik`` command: argument parsing and printing only.

Each verb's work is a function in :mod:`mantik_spec.operations` that tests call
without click. Heavy modules (mlflow, gitpython) are imported inside the verbs
that need them, so ``--help`` and ``validate`` stay fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import click

from . import views

REPLACE_HELP = (
    "Run this declared point (e.g. 'sweep[lr=0.1]') again though a run of it finished, failed or was cancelled; "
    "repeatable."
)

# exit statuses besides 0 and 1 (an error)
CHANGES = 2  # plan --detailed-exitcode: the plan has changes
FAILED = 3  # plan --fail-on-failed: a declared point failed with no retries left
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C, as shells report SIGINT (128 + 2)

PROJECT_DIR = click.option(
    "-C",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run as if started in this directory.",
)


def exit_status(run: Callable[[], int | None]) -> int:
    """The exit status of a verb (as DVC's ``main`` reads ``cmd.do_run()``): what it returned (None is 0); 1 for
    an error a user can cause or fix (a MantikError: mantik_spec/errors.py), printed as its lines on stderr; 130
    for Ctrl-C. Anything else is a bug and keeps its traceback."""
    from .errors import MantikError  # imports nothing heavy

    try:
        return run() or 0
    except MantikError as exc:
        for line in exc.lines():
            click.echo(line, err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return INTERRUPTED
    except BrokenPipeError as exc:
        if _stdout_closed():
            raise  # `mantik plan | head`: click ends quietly, as a pipeline expects
        # a helper process (git, ssh, a scheduler command) ended while we wrote to it: never exit in silence
        click.echo(f"Error: a helper process ended before taking its input ({exc.strerror or exc})", err=True)
        return 1


def _stdout_closed() -> bool:
    """Whether our own stdout's reader is gone (a broken pipe can also come from a helper's stdin)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or stdout is not a real file
        return False


def parse_duration(text: str) -> float:
    from .spec.model import duration_seconds

    try:
        return duration_seconds(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class WorkflowGroup(click.Group):
    """``mantik --help`` lists the verbs in the order a project meets them, each with a whole line."""

    ORDER = (
        "init", "validate", "plan", "apply", "status", "logs", "show", "explain",
        "cancel", "reproduce", "watch", "force-unlock", "schema", "completion",
    )  # fmt: skip

    # one line each at 80 columns; `mantik VERB --help` has the whole story
    SUMMARY = {
        "init": "Start a project: a commented mantik.yaml, CI files",
        "validate": "Check mantik.yaml: one FILE:LINE:COL line per problem",
        "plan": "What apply would submit, retry, repair or cancel, and why",
        "apply": "Submit what is missing and repair what drifted",
        "status": "Every declared run: state, attempt, job, age, metrics",
        "logs": "A run's output (run id, job id or point id)",
        "show": "An experiment's grid against its metrics, best point marked",
        "explain": "The identity inputs of a point or run and their run key",
        "cancel": "Cancel the live runs of experiments, points or runs",
        "reproduce": "Re-create a run from its MLflow record, linked to it",
        "watch": "Re-validate and re-plan on every change (--apply too)",
        "force-unlock": "Release the project lock of an apply that is gone",
        "schema": "The JSON Schema of mantik.yaml (or its Markdown reference)",
        "completion": "Shell completion for bash, zsh or fish",
    }

    def invoke(self, ctx):
        """Runs the verb and exits with its status: :func:`exit_status`."""
        ctx.exit(exit_status(partial(super().invoke, ctx)))

    def list_commands(self, ctx):
        known = [name for name in self.ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def format_commands(self, ctx, formatter):
        rows = [
            (name, self.SUMMARY.get(name) or self.commands[name].get_short_help_str(limit=1000))
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=WorkflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mantik-spec")
@click.option("-v", "--verbose", is_flag=True, help="Print how many tracking-store calls were made.")
@click.pass_context
def main(ctx, verbose):
    """GitOps for machine learning on HPC: mantik.yaml declares the runs, plan shows what is missing, apply submits it."""
    ctx.obj = {"verbose": verbose}


def _report_calls(ctx, project) -> None:
    if not ctx.obj.get("verbose"):
        return
    store = project.store
    click.echo(f"tracking store calls: {store.calls}", err=True)
    if store.recorded_runs:
        per_run = store.recording_calls / store.recorded_runs
        click.echo(f"recording {store.recorded_runs} started run(s): {per_run:.1f} calls per run", err=True)
    from .backends.ssh import SSHHost

    for name, backend in project.backends.items():
        if backend.calls:
            click.echo(
                f"backend {name} scheduler calls: "
                + ", ".join(f"{count} {command}" for command, count in sorted(backend.calls.items())),
                err=True,
            )
        host = backend.host
        if isinstance(host, SSHHost):
            click.echo(
                f"backend {name} ssh: {host.connections_opened} connection(s) opened, {host.commands_run} commands, "
                f"{host.trees_sent} code tree(s) sent ({host.bytes_sent} bytes in all)",
                err=True,
            )


@main.command()
@PROJECT_DIR
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def validate(directory, files):
    """Check mantik.yaml; print one line per problem as FILE:LINE:COL: FIELD: MESSAGE.

    With FILES (as pre-commit passes them), check each spec among them, each read from its own
    directory, and the spec that reads each other file (an MLproject, a config, a .dvc file): the
    nearest mantik.yaml in its directory or above.
    """
    from .spec.load import load_spec

    if not files:
        _print_notes(load_spec(directory))
        click.echo("mantik.yaml is valid.")
        return 0
    import dataclasses

    from .spec.load import SPEC_FILE, specs_for_files
    from .spec.yamlload import SpecError

    projects, problems = specs_for_files(directory, files)
    for project in projects:
        try:
            loaded = load_spec(directory / project)
        except SpecError as exc:  # each file named from where the command runs, as pre-commit shows it
            problems += [dataclasses.replace(p, file=str(project / p.file)) for p in exc.problems]
            continue
        _print_notes(loaded)
        click.echo(f"{project / SPEC_FILE} is valid.")
    for problem in problems:
        click.echo(str(problem), err=True)
    return 1 if problems else 0


def _print_notes(loaded) -> None:
    """What runs differently from `mlflow run` (MLproject environments that are not used, unchecked types)."""
    from .spec.includes import mlproject_notes

    for note in mlproject_notes(loaded.spec, loaded.root):
        click.echo(f"Note: {note}", err=True)


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "markdown"]),
    default="json",
    show_default=True,
    help="The JSON Schema, or the Markdown reference of every key.",
)
def schema(fmt):
    """Print the JSON Schema of mantik.yaml (or its reference in Markdown)."""
    if fmt == "markdown":
        from .spec.reference import reference_markdown

        click.echo(reference_markdown(), nl=False)
        return
    from .spec.schema import schema_text

    click.echo(schema_text(), nl=False)


@main.command()
@PROJECT_DIR
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Save the plan for `mantik apply FILE`.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--prune", is_flag=True, help="Plan to cancel live runs the spec no longer declares.")
@click.option("--replace", multiple=True, metavar="POINT", help=REPLACE_HELP)
@click.option(
    "--refresh",
    is_flag=True,
    help="Read every run from MLflow, not only what changed since the last plan (after editing runs by hand).",
)
@click.option(
    "-v",
    "--verbose",
    "every_run",
    is_flag=True,
    help=f"List every run, also in plans of more than {views.GROUP_ABOVE}.",
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error.")
@click.option(
    "--fail-on-failed",
    is_flag=True,
    help="Exit 3 when a declared point failed with no retries left (unless changes are pending: then 2 or 0).",
)
@click.pass_context
def plan(ctx, directory, out, as_json, fmt, prune, replace, refresh, every_run, detailed_exitcode, fail_on_failed):
    """Show which declared runs exist, run, failed or are missing, and what apply would do."""
    from .errors import UserError
    from .operations.project import build_plan, open_project
    from .reconcile.plan import Action
    from .reconcile.planfile import write_plan

    project = open_project(directory)
    result, _ = build_plan(project, prune=prune, replace=replace, cached=not refresh)
    if out:
        if not out.parent.is_dir():
            raise UserError(f"cannot save the plan: {out.parent} is not a directory")
        write_plan(out, result, prune, replace)
    fmt = "json" if as_json else fmt
    if fmt == "json":
        click.echo(views.render_json(result))
    elif fmt == "markdown":
        click.echo(views.render_markdown(result), nl=False)
    else:
        click.echo(views.render_text(result, color=sys.stdout.isatty(), every_run=every_run))
        if out:
            click.echo(f"\nSaved the plan to {out}. To carry it out exactly: mantik apply {out}")
    _report_calls(ctx, project)
    if result.errors:
        return _errors(result.errors)
    if detailed_exitcode and result.has_changes:
        return CHANGES
    if fail_on_failed and not result.has_changes and result.count(Action.FAILED):
        return FAILED
    return 0


def _errors(errors: list[str]) -> int:
    """A backend that could not be asked is an error (exit 1) once everything else was shown and done."""
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    return 1 if errors else 0


@main.command()
@PROJECT_DIR
@click.argument("planfile", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--auto-approve", is_flag=True, help="Apply without asking.")
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the runs to the end, resubmitting failed ones while retries allow; exit 1 if any failed.",
)
@click.option("--prune", is_flag=True, help="Cancel live runs the spec no longer declares.")
@click.option("--replace", multiple=True, metavar="POINT", help=REPLACE_HELP)
@click.option(
    "--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock (30s, 5m)."
)
@click.pass_context
def apply(ctx, directory, planfile, auto_approve, wait, prune, replace, lock_timeout):
    """Submit what the plan says is missing (and repair what drifted)."""
    from .operations import apply as operation
    from .operations.project import open_project
    from .reconcile.planfile import read_plan

    timeout = parse_duration(lock_timeout)
    interactive = sys.stdin.isatty()

    def show(result):
        click.echo(views.render_text(result, color=sys.stdout.isatty()))

    def confirm(result) -> bool:
        if auto_approve:
            return True
        if not interactive:
            raise click.UsageError(
                "apply needs a confirmation: run it on a terminal, pass --auto-approve, or apply a saved plan"
            )
        click.echo("")
        return (
            click.prompt(
                "Do you want to perform these actions? Only 'yes' will be accepted", default="", show_default=False
            )
            == "yes"
        )

    def waiting(holder):
        click.echo(f"Waiting for the project lock ({holder.describe()})...", err=True)

    saved = read_plan(planfile) if planfile else None
    project = open_project(directory)
    result = operation.apply(
        project,
        confirm=confirm,
        show=show,
        saved=saved,
        prune=prune,
        replace=replace,
        lock_timeout=timeout,
        on_lock_wait=waiting,
    )
    if not result.applied:
        if result.plan.has_changes:
            click.echo("Apply cancelled.")
        _report_calls(ctx, project)
        return _errors(result.plan.errors)
    click.echo(f"\nApply complete: {len(result.started)} run(s) started.")
    if wait and result.started:
        failures = _follow(project, result.started)
        while failures and saved is None:  # retries: are spent now, as Slurm's requeue would
            retried = operation.apply(
                project,
                confirm=lambda plan, failed=failures: _only_retries_of(plan, failed),
                show=lambda plan: None,
                lock_timeout=timeout,
                on_lock_wait=waiting,
            )
            if not retried.applied or not retried.started:
                break  # no retries left (or the plan holds more than retries: that is the next apply's)
            click.echo(f"\nRetrying {len(retried.started)} failed run(s): {views.retry_reasons(retried.plan)}")
            failures = _follow(project, retried.started)
        if failures:
            _report_calls(ctx, project)
            for line in views.failure_lines(failures):
                click.echo(line, err=True)
            return 1
    _report_calls(ctx, project)
    return _errors(result.plan.errors)


def _only_retries_of(plan, failures) -> bool:
    """Whether ``plan`` only starts new attempts of points that just failed: `apply --wait` carries those out
    without asking again; anything else (a new commit meanwhile) waits for the next apply."""
    from .reconcile.plan import Action

    failed = {f.point_id for f in failures}
    changes = plan.changes()
    return bool(changes) and all(
        e.action in (Action.RETRY, Action.REPAIR) and e.point_id in failed and e.next_attempt for e in changes
    )


def _follow(project, run_ids) -> list:
    """Follow the runs to their end: a progress bar on a terminal, a line per change (and at least every
    few minutes) in a CI log. Returns the runs that did not finish successfully."""
    from .operations.status import follow, unsuccessful

    if sys.stdout.isatty():
        final = _follow_with_bar(project, run_ids)
    else:
        final = follow(project, run_ids, _LogLines())
    return unsuccessful(project, final)


class _LogLines:
    """Progress for a log that nobody watches live: one line when the counts change, else every few minutes."""

    QUIET_SECONDS = 300

    def __init__(self):
        import time

        self.clock = time.monotonic
        self.started = self.last_time = self.clock()
        self.last_text = None

    def __call__(self, states: dict[str, str]) -> None:
        text = views.state_counts(states)
        now = self.clock()
        if text != self.last_text or now - self.last_time >= self.QUIET_SECONDS:
            click.echo(f"[{views.age(now - self.started)}] runs: {text}")
            self.last_text, self.last_time = text, now


def _follow_with_bar(project, run_ids) -> dict[str, str]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .operations.status import ENDED, follow

    with Progress(
        TextColumn("[bold]runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        task = progress.add_task("", total=len(run_ids))

        def update(states):
            done = sum(1 for state in states.values() if state in ENDED)
            progress.update(task, completed=done, description=views.state_counts(states))

        return follow(project, run_ids, update)


@main.command()
@PROJECT_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--watch", is_flag=True, help="Refresh in place until every run has ended.")
@click.option("--interval", default="2s", show_default=True, help="How often --watch refreshes.")
@click.pass_context
def status(ctx, directory, as_json, watch, interval):
    """A table of the declared runs: state, attempt, job, age and last metrics."""
    import json

    from .operations.project import open_project
    from .operations.status import status_rows

    project = open_project(directory)
    errors: list[str] = []
    if watch:
        _watch_status(project, parse_duration(interval))
    else:
        rows = status_rows(project, errors)
        if as_json:
            click.echo(json.dumps([row.to_json() for row in rows], indent=2))
        else:
            _print_status_table(rows)
    _report_calls(ctx, project)
    return _errors(errors)


def _watch_status(project, interval: float) -> None:
    import time

    from rich.console import Console
    from rich.live import Live

    from .operations.status import ENDED, status_rows

    console = Console()
    with Live(console=console, auto_refresh=False) as live:
        while True:
            rows = status_rows(project)
            live.update(views.status_table(rows), refresh=True)
            if all(row.state in ENDED or row.state in ("not submitted", "suspended") for row in rows):
                break
            time.sleep(project.poll_pause(interval))
    click.echo("Every declared run has ended (or was never submitted).")


def _print_status_table(rows) -> None:
    views.table_console().print(views.status_table(rows))


@main.command()
@PROJECT_DIR
@click.argument("targets", nargs=-1, required=True)
@click.option("--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock.")
@click.pass_context
def cancel(ctx, directory, targets, lock_timeout):
    """Cancel the live runs of EXPERIMENTs or RUNs (run id, job id or point id; one scheduler call per backend)."""
    from .operations.control import cancel as cancel_runs
    from .operations.project import open_project

    project = open_project(directory)
    cancelled = cancel_runs(project, list(targets), parse_duration(lock_timeout))
    click.echo(f"Cancelled {len(cancelled)} run(s)." if cancelled else "Nothing to cancel: no live run matches.")
    _report_calls(ctx, project)


@main.command()
@PROJECT_DIR
@click.argument("run_id", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the run ends.")
def logs(directory, run_id, follow):
    """Print a run's output (stdout and stderr of its command); RUN is a run id, job id or point id, or a prefix."""
    from .operations.control import follow_log
    from .operations.project import open_project

    project = open_project(directory)
    for chunk in follow_log(project, run_id, follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@main.command()
@PROJECT_DIR
@click.argument("target")
def explain(directory, target):
    """Print the identity inputs of a point (EXPERIMENT[POINT]) or a RUN (run or job id) and the key they hash to."""
    import json

    from .operations.explain import explain as explain_target
    from .operations.project import open_project

    click.echo(json.dumps(explain_target(open_project(directory), target), indent=2, ensure_ascii=False))


@main.command()
@PROJECT_DIR
@click.argument("run_id", metavar="RUN")
@click.option("--backend", help="Run it on this backend instead of the original one.")
@click.option("--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock.")
def reproduce(directory, run_id, backend, lock_timeout):
    """Re-create RUN (run id, job id or point id) from its MLflow record: same commit, parameters, data, key."""
    from .operations.project import open_project
    from .operations.reproduce import reproduce as reproduce_run

    new_run, original = reproduce_run(open_project(directory), run_id, backend, parse_duration(lock_timeout))
    click.echo(f"Submitted run {new_run}, reproducing {original}.")


@main.command()
@PROJECT_DIR
@click.option(
    "--from-mlproject",
    "mlproject",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the entry points from an existing MLflow MLproject file.",
)
@click.option(
    "--backend-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run on the site of an existing Mantik compute-backend config (UNICORE, SSH or Firecrest).",
)
@click.option(
    "--ci", type=click.Choice(["github", "gitlab"]), help="Also write CI files: plan on review, apply on merge."
)
@click.option(
    "--install",
    metavar="REQUIREMENT",
    help="How CI installs mantik-spec (a pip requirement such as git+https://HOST/ORG/mantik-spec@TAG); "
    "default: pinned to where this installation came from.",
)
@click.option("--default-branch", default="main", show_default=True, help="The branch whose merges apply.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(directory, mlproject, backend_config, ci, install, default_branch, force):
    """Write a commented mantik.yaml (and CI files), and keep .mantik/ out of git."""
    from .operations.init import init as write_files

    written = write_files(
        directory,
        mlproject=mlproject,
        backend_config=backend_config,
        ci=ci,
        install=install,
        force=force,
        default_branch=default_branch,
    )
    for path in written:
        click.echo(f"wrote {path}")
    click.echo("Next: fill in the grid values in mantik.yaml, then `mantik validate` and `mantik plan`.")


@main.command()
@PROJECT_DIR
@click.argument("experiment")
@click.option("--metric", help="The metric that ranks the points (default: the experiment's declared metric).")
@click.option("--goal", type=click.Choice(["min", "max"]), help="Lower or higher is better (needed with --metric).")
@click.option(
    "--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the metric to this PNG."
)
@click.option("--against", help="The parameter on the plot's x axis (default: the first that varies).")
def show(directory, experiment, metric, goal, plot_file, against):
    """An experiment's grid: parameters against final metrics, the best point marked."""
    from .operations.project import open_project
    from .operations.show import grid, plot

    rows, ranking = grid(open_project(directory), experiment, metric, goal)
    metric = ranking.metric
    parameters = sorted({name for row in rows for name in row.parameters})
    metrics = sorted({name for row in rows for name in row.metrics})
    views.table_console().print(views.grid_table(rows))
    if metric:
        click.echo(f"* best by {metric} ({ranking.goal}; from {ranking.source})")
    elif metrics:
        click.echo(
            f"No point marked best: name the metric with --metric NAME --goal min|max, or declare "
            f"metric: {{name: ..., goal: min|max}} on experiments.{experiment} (logged: {', '.join(metrics)})"
        )
    if plot_file:
        varying = [p for p in parameters if len({row.parameters.get(p) for row in rows}) > 1]
        axis = against or (varying[0] if varying else (parameters[0] if parameters else None))
        if axis is None or metric is None:
            raise click.UsageError("nothing to plot yet: no parameters or no metrics")
        plot(rows, metric, axis, plot_file)
        click.echo(f"wrote {plot_file}")


@main.command()
@PROJECT_DIR
@click.option("--apply", "and_apply", is_flag=True, help="Also apply after each change (only when the tree is clean).")
def watch(directory, and_apply):
    """Re-validate and re-plan whenever mantik.yaml, the code or the data pins change; Ctrl-C stops."""
    from rich.console import Console

    from .operations.watch import changes
    from .spec.load import load_spec
    from .spec.yamlload import SpecError

    console = Console()
    root = Path(directory).resolve()

    def refresh(reason: str) -> None:
        console.clear()
        console.print(f"[dim]mantik watch: {reason}; Ctrl-C stops[/dim]")
        try:
            load_spec(root)
        except SpecError as exc:
            for line in exc.lines():  # on stdout, where watch shows its plans
                click.echo(line)
            return
        _plan_once(root, and_apply)

    try:  # which code paths to watch; an invalid spec is reported by the first refresh
        code_paths = load_spec(root).spec.code.paths
    except SpecError:
        code_paths = None
    # the first batch comes once the watcher is in place: a change made during the first plan is seen
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C while a plan is made stops watching too
        for changed in changes(root, code_paths):
            names = ", ".join(sorted(Path(p).name for p in changed)[:3])
            refresh(f"changed: {names}" if changed else "watching")
    click.echo("Stopped watching.")


def _plan_once(root: Path, and_apply: bool) -> None:
    """One plan (and apply, when asked and the tree is clean), every error reported, none fatal."""
    from .operations import apply as operation
    from .operations.project import build_plan, open_project

    def plan_and_apply() -> None:
        project = open_project(root)
        result, observation = build_plan(project, cached=True)
        click.echo(views.render_text(result, color=sys.stdout.isatty()))
        if and_apply and result.has_changes and not observation.code.dirty:
            operation.apply(project, confirm=lambda plan: True, show=lambda plan: None)
            click.echo("Applied.")

    if exit_status(plan_and_apply) == INTERRUPTED:
        raise KeyboardInterrupt  # Ctrl-C: stop watching; any other error was printed: keep watching
    from .faults import checkpoint

    checkpoint("after-watch-plan")  # tests: a change made while a plan is still being made and shown


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script: eval "$(mantik completion bash)" in ~/.bashrc."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)(main, {}, "mantik", "_MANTIK_COMPLETE")
    click.echo(completer.source())


@main.command("force-unlock")
@PROJECT_DIR
@click.argument("lock_id")
def force_unlock(directory, lock_id):
    """Release the project lock left by an apply that is gone."""
    from .operations.project import open_project
    from .state.lock import force_unlock as release

    holder = release(open_project(directory).store, lock_id)
    click.echo(f"Released the project lock {holder.lock_id} held by {holder.who}@{holder.host}.")


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``mantik`` command: argument parsing and printing only.

Each verb's work is a function in :mod:`mantik_spec.operations` that tests call
without click, and what it draws is a function in :mod:`mantik_spec.views`. Each
verb returns its exit status; :func:`exit_status` alone turns errors into one.
Heavy modules (mlflow, gitpython) are imported inside the verbs that need them,
so ``--help`` and ``validate`` stay fast.
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
    "Run this declared point again though a run of it finished, failed or was cancelled: its id, or a unique "
    "subset of its values (e.g. 'sweep[lr=0.1]'); an EXPERIMENT runs its failed and cancelled points again; "
    "repeatable."
)
SCRATCH = click.option(
    "--scratch",
    is_flag=True,
    help="Run the working tree as it stands (uncommitted and untracked files, minus what git ignores), "
    "snapshotted as a commit kept under refs/mantik/scratch/; the branch, index, working tree and stash are untouched.",
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
        for line in exc.lines():  # they carry text from the store and the backends: shown inert
            click.echo(views.printable(line), err=True)
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
        "init", "validate", "plan", "apply", "status", "sync", "logs", "show", "explain",
        "cancel", "reproduce", "watch", "adopt", "force-unlock", "schema", "completion",
    )  # fmt: skip

    # one line each at 80 columns; `mantik VERB --help` has the whole story
    SUMMARY = {
        "init": "Start a project: a commented mantik.yaml, CI files",
        "validate": "Check mantik.yaml: one FILE:LINE:COL line per problem",
        "plan": "What apply would submit, retry, repair or cancel, and why",
        "apply": "Submit what is missing and repair what drifted",
        "status": "Every declared run: state, attempt, job, age, metrics",
        "sync": "Upload the offline journals of jobs without network",
        "logs": "A run's output (run id, job id or point id)",
        "show": "An experiment's grid against its metrics, best point marked",
        "explain": "The identity inputs of a point or run and their run key",
        "cancel": "Cancel the live runs of experiments, points or runs",
        "reproduce": "Re-create a run from its MLflow record, linked to it",
        "watch": "Re-validate and re-plan on every change (--apply too)",
        "adopt": "Sign unsigned finished runs you trust (MANTIK_SIGNING_KEY)",
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
    if ctx.obj.get("verbose"):
        views.show_calls(views.Output.of_process(), project.store, project.backends)


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
        click.echo(views.printable(f"Note: {note}"), err=True)


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
@click.option(
    "--no-backends",
    is_flag=True,
    help="Plan from MLflow alone: log in to no backend and send no credential anywhere (for pull requests).",
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error.")
@SCRATCH
@click.option(
    "--fail-on-failed",
    is_flag=True,
    help="Exit 3 when a declared point failed with no retries left (unless changes are pending: then 2 or 0).",
)
@click.pass_context
def plan(
    ctx,
    directory,
    out,
    as_json,
    fmt,
    prune,
    replace,
    refresh,
    every_run,
    no_backends,
    detailed_exitcode,
    fail_on_failed,
    scratch,
):
    """Show which declared runs exist, run, failed or are missing, and what apply would do."""
    from .errors import UserError
    from .operations.project import build_plan, open_project
    from .reconcile.plan import Action
    from .reconcile.planfile import write_plan

    project = open_project(directory, scratch=scratch)
    result, _ = build_plan(
        project, prune=prune, replace=replace, cached=not refresh, ask_backends=not no_backends, estimate=True
    )
    if out:
        if no_backends:  # its runs' jobs are unknown: applied as is, it would decide nothing about them
            raise UserError("--out with --no-backends: a plan that asked no backend cannot be applied; plan without it")
        if not out.parent.is_dir():
            raise UserError(f"cannot save the plan: {out.parent} is not a directory")
        write_plan(out, result, prune, replace)
    views.show_plan(views.Output.of_process(), result, "json" if as_json else fmt, every_run, saved_to=out)
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
        click.echo(f"Error: {views.printable(error)}", err=True)
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
@SCRATCH
@click.pass_context
def apply(ctx, directory, planfile, auto_approve, wait, prune, replace, lock_timeout, scratch):
    """Submit what the plan says is missing (and repair what drifted)."""
    from .operations import apply as operation
    from .operations.project import open_project
    from .reconcile.plan import Action
    from .reconcile.planfile import read_plan

    timeout = parse_duration(lock_timeout)
    interactive = sys.stdin.isatty()
    output = views.Output.of_process()

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
        click.echo(f"Waiting for the project lock ({views.printable(holder.describe())})...", err=True)

    saved = read_plan(planfile) if planfile else None
    project = open_project(directory, scratch=scratch)
    result = operation.apply(
        project,
        confirm=confirm,
        show=partial(views.show_plan, output),
        saved=saved,
        prune=prune,
        replace=replace,
        lock_timeout=timeout,
        on_lock_wait=waiting,
    )
    # runs an earlier apply started and that still run (its --wait was stopped with Ctrl-C): --wait follows them
    # (not when a backend could not report: its runs' end would never be seen; the error is shown instead)
    live = [e.run_id for e in result.plan.entries if e.action is Action.RUNNING and e.run_id]
    live = live if not result.plan.errors else []
    if not result.applied and (result.plan.has_changes or not (wait and live)):
        if result.plan.has_changes:
            click.echo("Apply cancelled.")
        _report_calls(ctx, project)
        return _errors(result.plan.errors)
    if result.applied:
        click.echo(f"\nApply complete: {len(result.started)} run(s) started.")
        views.show_promoted(output, result.promoted)
    if wait and live:
        click.echo(f"Following {len(live)} run(s) started earlier and still running.")
    if wait and (result.started or live):
        failures = operation.follow_and_retry(
            project,
            [*result.started, *live],
            on_progress=partial(views.run_progress, output),
            on_retry=partial(views.show_retry, output),
            retry=saved is None,  # a saved plan is carried out exactly: no more than it says
            lock_timeout=timeout,
            on_lock_wait=waiting,
        )
        # the runs it waited for have ended: the models of their experiments are promoted now, not next apply
        promotion = operation.promote(project, lock_timeout=timeout, on_lock_wait=waiting)
        views.show_promoted(output, promotion.promoted)
        if failures:
            _report_calls(ctx, project)
            views.show_failures(output, failures)
            return 1
        if promotion.plan.errors:  # a model refused (a metric or an artifact its winner lacks)
            _report_calls(ctx, project)
            return _errors(promotion.plan.errors)
    _report_calls(ctx, project)
    return _errors(result.plan.errors)


@main.command()
@PROJECT_DIR
@click.argument("experiments", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--watch", is_flag=True, help="Refresh in place until every run has ended.")
@click.option("--interval", default="2s", show_default=True, help="How often --watch refreshes.")
@click.pass_context
def status(ctx, directory, experiments, as_json, watch, interval):
    """A table of the declared runs (of the EXPERIMENTS named, or all): state, attempt, job, age, last metrics."""
    from .operations.project import open_project
    from .operations.runref import job_label
    from .operations.status import status_rows, watch_rows

    output = views.Output.of_process()
    project = open_project(directory)
    errors: list[str] = []
    if watch:
        views.watch_status(output, watch_rows(project, parse_duration(interval), experiments), job_label)
    elif as_json:
        click.echo(views.json_text([row.to_json() for row in status_rows(project, errors, experiments)]))
    else:
        views.show_status(output, status_rows(project, errors, experiments), job_label)
    _report_calls(ctx, project)
    return _errors(errors)


@main.command()
@PROJECT_DIR
@click.pass_context
def sync(ctx, directory):
    """Upload what jobs recorded offline (backends with tracking: offline or auto) into their runs: new points
    only, each once; plan, status and apply do the same on the way. Exits 1 when a journal was not synced whole."""
    from .operations.project import open_project
    from .operations.sync import sync as sync_runs
    from .views.output import printable

    project = open_project(directory)
    report = sync_runs(project)
    for result in report.results:
        if result.written:
            point = report.point_of.get(result.run_id, "?")
            ended = f", {result.status.lower()}" if result.status else ""
            click.echo(
                printable(
                    f"{point} ({result.run_id}): {result.metrics} point(s), {result.params} param(s), "
                    f"{result.tags} tag(s), {result.artifacts} artifact(s){ended}"
                )
            )
    written = sum(1 for r in report.results if r.written)
    click.echo(f"Synced {written} run(s)." if written else "Nothing to sync: every journal is in MLflow.")
    _report_calls(ctx, project)
    return _errors(report.problems())


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
@click.argument("targets", nargs=-1, required=True)
@click.option("--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock.")
@click.pass_context
def adopt(ctx, directory, targets, lock_timeout):
    """Sign the unsigned FINISHED runs of EXPERIMENTs or RUNs with MANTIK_SIGNING_KEY, so they count as results."""
    from .operations.adopt import adopt as adopt_runs
    from .operations.project import open_project

    project = open_project(directory)
    results = adopt_runs(project, list(targets), parse_duration(lock_timeout))
    for result in results:
        run = f"{result.run.run_id} ({result.run.point_id or '?'})"
        click.echo(views.printable(f"adopted {run}" if result.adopted else f"not adopted {run}: {result.why}"))
    adopted = sum(1 for result in results if result.adopted)
    click.echo(f"Adopted {adopted} run(s)." if results else "Nothing to adopt: no unsigned finished run matches.")
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

    from .operations.explain import explain as explain_target
    from .operations.project import open_project

    click.echo(views.json_text(explain_target(open_project(directory), target)))


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
    click.echo(views.printable(f"Submitted run {new_run}, reproducing {original}."))


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
@click.option(
    "--default-branch",
    help="The branch whose merges apply (default: the repository's: origin/HEAD, else the branch checked out, "
    "else init.defaultBranch).",
)
@click.option("--force", is_flag=True, help="Overwrite files that exist (with --ci, mantik.yaml is kept).")
def init(directory, mlproject, backend_config, ci, install, default_branch, force):
    """Write a commented mantik.yaml (and CI files), and keep .mantik/ out of git."""
    from .operations.init import init as write_files

    done = write_files(
        directory,
        mlproject=mlproject,
        backend_config=backend_config,
        ci=ci,
        install=install,
        force=force,
        default_branch=default_branch,
    )
    for path in done.written:
        click.echo(f"wrote {path}")
    for note in done.notes:
        click.echo(note, err=note.startswith("Warning:"))
    if any(path.name == "mantik.yaml" for path in done.written):
        click.echo("Next: fill in the grid values in mantik.yaml, then `mantik validate` and `mantik plan`.")
    else:
        click.echo("Next: commit the CI file and give the CI the secrets docs/ci.md lists.")


@main.command()
@PROJECT_DIR
@click.argument("experiment")
@click.option("--metric", help="The metric that ranks the points (default: the experiment's declared metric).")
@click.option("--goal", type=click.Choice(["min", "max"]), help="Lower or higher is better (needed with --metric).")
@click.option(
    "--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the metric to this PNG."
)
@click.option("--against", help="The parameter on the plot's x axis (default: the first that varies).")
@click.option(
    "--per-seed", is_flag=True, help="With seeds: every run on its own row (default: the mean over seeds per row)."
)
def show(directory, experiment, metric, goal, plot_file, against, per_seed):
    """An experiment's grid: parameters against final metrics, the best point marked; with seeds, the mean
    ± sd over the seeds of each parameter set, the best mean marked."""
    from .operations.project import open_project
    from .operations.show import grid, plot, plot_axis

    rows, ranking = grid(open_project(directory), experiment, metric, goal, per_seed)
    views.show_grid(views.Output.of_process(), rows, ranking, experiment)
    if plot_file:
        axis = plot_axis(rows, against)
        if axis is None or ranking.metric is None:
            raise click.UsageError("nothing to plot yet: no parameters or no metrics")
        plot(rows, ranking.metric, axis, plot_file)
        click.echo(f"wrote {plot_file}")


@main.command()
@PROJECT_DIR
@click.option("--apply", "and_apply", is_flag=True, help="Also apply after each change (only when the tree is clean).")
def watch(directory, and_apply):
    """Re-validate and re-plan whenever mantik.yaml, the code or the data pins change; Ctrl-C stops."""
    from .operations.watch import changes
    from .spec.load import load_spec
    from .spec.yamlload import SpecError

    output = views.Output.of_process()
    root = Path(directory).resolve()

    def refresh(changed: set[str]) -> None:
        views.watch_heading(output, changed)
        try:
            load_spec(root)
        except SpecError as exc:
            for line in exc.lines():  # on stdout, where watch shows its plans
                click.echo(views.printable(line))
            return
        _plan_once(output, root, and_apply)

    try:  # which code paths to watch; an invalid spec is reported by the first refresh
        code_paths = load_spec(root).spec.code.paths
    except SpecError:
        code_paths = None
    # the first batch comes once the watcher is in place: a change made during the first plan is seen
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C while a plan is made stops watching too
        for changed in changes(root, code_paths):
            refresh(changed)
    click.echo("Stopped watching.")


def _plan_once(output: views.Output, root: Path, and_apply: bool) -> None:
    """One plan (and apply, when asked and the tree is clean), every error reported, none fatal."""
    from .faults import checkpoint
    from .operations.watch import plan_once

    def once() -> None:
        if plan_once(root, and_apply, partial(views.show_plan, output)):
            click.echo("Applied.")

    if exit_status(once) == INTERRUPTED:
        raise KeyboardInterrupt  # Ctrl-C: stop watching; any other error was printed: keep watching
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
    click.echo(views.printable(f"Released the project lock {holder.lock_id} held by {holder.who}@{holder.host}."))


if __name__ == "__main__":  # pragma: no cover
    main()

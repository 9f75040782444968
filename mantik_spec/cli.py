"""The ``mantik`` command: argument parsing and printing only.

Each verb's work is a function in :mod:`mantik_spec.operations` that tests call
without click. Heavy modules (mlflow, gitpython) are imported inside the verbs
that need them, so ``--help`` and ``validate`` stay fast.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

PROJECT_DIR = click.option(
    "-C",
    "directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run as if started in this directory.",
)


@contextmanager
def user_errors():
    """Turn every error a user can cause or fix into one line on stderr and exit 1."""
    # none of these modules imports mlflow or git at import time
    from .backends.base import BackendError
    from .operations.errors import UserError
    from .reconcile.planfile import StalePlanError
    from .spec.yamlload import SpecError
    from .state.git import GitError
    from .state.lock import LockError
    from .state.tracking import TrackingError

    expected = (BackendError, StalePlanError, UserError, GitError, LockError, TrackingError)
    try:
        yield
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    except expected as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


def parse_duration(text: str) -> float:
    from .spec.model import duration_seconds

    try:
        return duration_seconds(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mantik-spec")
@click.option("-v", "--verbose", is_flag=True, help="Print how many tracking-store calls were made.")
@click.pass_context
def main(ctx, verbose):
    """GitOps for machine learning on HPC: mantik.yaml declares the runs, plan shows what is missing, apply submits it."""
    ctx.obj = {"verbose": verbose}


def _report_calls(ctx, project) -> None:
    if not ctx.obj.get("verbose"):
        return
    click.echo(f"tracking store calls: {project.store.calls}", err=True)
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
def validate(directory):
    """Check mantik.yaml; print one line per problem as FILE:LINE:COL: FIELD: MESSAGE."""
    from .spec.load import load_spec

    with user_errors():
        load_spec(directory)
    click.echo("mantik.yaml is valid.")


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
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error.")
@click.pass_context
def plan(ctx, directory, out, as_json, fmt, prune, detailed_exitcode):
    """Show which declared runs exist, run, failed or are missing, and what apply would do."""
    from .operations.errors import UserError
    from .operations.project import build_plan, open_project
    from .reconcile import render
    from .reconcile.planfile import write_plan

    with user_errors():
        project = open_project(directory)
        result, _ = build_plan(project, prune=prune)
        if out:
            if not out.parent.is_dir():
                raise UserError(f"cannot save the plan: {out.parent} is not a directory")
            write_plan(out, result, prune)
    fmt = "json" if as_json else fmt
    if fmt == "json":
        click.echo(render.render_json(result))
    elif fmt == "markdown":
        click.echo(render.render_markdown(result), nl=False)
    else:
        click.echo(render.render_text(result, color=sys.stdout.isatty()))
        if out:
            click.echo(f"\nSaved the plan to {out}. To carry it out exactly: mantik apply {out}")
    _report_calls(ctx, project)
    _exit_on_errors(result.errors)
    if detailed_exitcode and result.has_changes:
        sys.exit(2)


def _exit_on_errors(errors: list[str]) -> None:
    """A backend that could not be asked is an error (exit 1) once everything else was shown and done."""
    for error in errors:
        click.echo(f"Error: {error}", err=True)
    if errors:
        sys.exit(1)


@main.command()
@PROJECT_DIR
@click.argument("planfile", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--auto-approve", is_flag=True, help="Apply without asking.")
@click.option("--wait", is_flag=True, help="Follow the runs to the end; exit 1 if any failed.")
@click.option("--prune", is_flag=True, help="Cancel live runs the spec no longer declares.")
@click.option(
    "--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock (30s, 5m)."
)
@click.pass_context
def apply(ctx, directory, planfile, auto_approve, wait, prune, lock_timeout):
    """Submit what the plan says is missing (and repair what drifted)."""
    from .operations import apply as operation
    from .operations.project import open_project
    from .reconcile.planfile import read_plan
    from .reconcile.render import render_text

    timeout = parse_duration(lock_timeout)
    interactive = sys.stdin.isatty()

    def show(result):
        click.echo(render_text(result, color=sys.stdout.isatty()))

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

    with user_errors():
        saved = read_plan(planfile) if planfile else None
        project = open_project(directory)
        result = operation.apply(
            project, confirm=confirm, show=show, saved=saved, prune=prune, lock_timeout=timeout, on_lock_wait=waiting
        )
        if not result.applied:
            if result.plan.has_changes:
                click.echo("Apply cancelled.")
            _report_calls(ctx, project)
            _exit_on_errors(result.plan.errors)
            return
        click.echo(f"\nApply complete: {len(result.started)} run(s) started.")
        if wait and result.started:
            failed = _follow(project, result.started)
            if failed:
                _report_calls(ctx, project)
                click.echo(f"{failed} run(s) did not finish successfully.", err=True)
                sys.exit(1)
    _report_calls(ctx, project)
    _exit_on_errors(result.plan.errors)


def _follow(project, run_ids) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .operations.status import ENDED, SUCCEEDED, follow

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
            counts = {}
            for state in states.values():
                counts[state] = counts.get(state, 0) + 1
            done = sum(n for s, n in counts.items() if s in ENDED)
            progress.update(task, completed=done, description=", ".join(f"{n} {s}" for s, n in sorted(counts.items())))

        final = follow(project, run_ids, update)
    return sum(1 for state in final.values() if state not in SUCCEEDED)


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

    with user_errors():
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
    _exit_on_errors(errors)


def _watch_status(project, interval: float) -> None:
    import time

    from rich.console import Console
    from rich.live import Live

    from .operations.status import ENDED, status_rows

    console = Console()
    with Live(console=console, auto_refresh=False) as live:
        while True:
            rows = status_rows(project)
            live.update(_status_table(rows), refresh=True)
            if all(row.state in ENDED or row.state in ("not submitted", "suspended") for row in rows):
                break
            time.sleep(project.poll_pause(interval))
    click.echo("Every declared run has ended (or was never submitted).")


def _table_console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: never cut a run's name to fit 80 columns
        console = Console(width=1000)
    return console


def _print_status_table(rows) -> None:
    _table_console().print(_status_table(rows))


def _status_table(rows):
    import time

    from rich.markup import escape
    from rich.table import Table

    metric_names = sorted({name for row in rows for name in row.metrics})[:6]
    table = Table(box=None, pad_edge=False)
    for column in ("experiment", "point", "state", "attempt", "job", "age", *metric_names):
        table.add_column(column)
    now_ms = time.time() * 1000
    for row in rows:
        age = _age((now_ms - row.started_ms) / 1000) if row.started_ms else ""
        job = (row.job_id or "").rstrip("/").rsplit("/", 1)[-1][:12]  # a UNICORE job id is its URL
        metrics = [f"{row.metrics[m]:.4g}" if m in row.metrics else "" for m in metric_names]
        table.add_row(
            escape(row.experiment), escape(row.point_id), row.state, str(row.attempt or ""), job, age, *metrics
        )
    return table


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


@main.command()
@PROJECT_DIR
@click.argument("targets", nargs=-1, required=True)
@click.option("--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock.")
@click.pass_context
def cancel(ctx, directory, targets, lock_timeout):
    """Cancel the live runs of EXPERIMENT names or RUN_IDs (one scheduler call per backend)."""
    from .operations.control import cancel as cancel_runs
    from .operations.project import open_project

    with user_errors():
        project = open_project(directory)
        cancelled = cancel_runs(project, list(targets), parse_duration(lock_timeout))
    click.echo(f"Cancelled {len(cancelled)} run(s)." if cancelled else "Nothing to cancel: no live run matches.")
    _report_calls(ctx, project)


@main.command()
@PROJECT_DIR
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the run ends.")
def logs(directory, run_id, follow):
    """Print a run's output (the combined stdout and stderr of its command)."""
    from .operations.control import follow_log
    from .operations.project import open_project

    with user_errors():
        project = open_project(directory)
        for chunk in follow_log(project, run_id, follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


@main.command()
@PROJECT_DIR
@click.argument("target")
def explain(directory, target):
    """Print the identity inputs of RUN_ID or EXPERIMENT[POINT] and the run key they hash to."""
    import json

    from .operations.explain import explain as explain_target
    from .operations.project import open_project

    with user_errors():
        click.echo(json.dumps(explain_target(open_project(directory), target), indent=2, ensure_ascii=False))


@main.command()
@PROJECT_DIR
@click.argument("run_id")
@click.option("--backend", help="Run it on this backend instead of the original one.")
@click.option("--lock-timeout", default="0s", show_default=True, help="How long to wait for the project lock.")
def reproduce(directory, run_id, backend, lock_timeout):
    """Re-create RUN_ID from its MLflow record: same commit, parameters, data and key; a new, linked run."""
    from .operations.project import open_project
    from .operations.reproduce import reproduce as reproduce_run

    with user_errors():
        new_run = reproduce_run(open_project(directory), run_id, backend, parse_duration(lock_timeout))
    click.echo(f"Submitted run {new_run}, reproducing {run_id}.")


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
    help="Run on the UNICORE site of an existing Mantik compute-backend config.",
)
@click.option(
    "--ci", type=click.Choice(["github", "gitlab"]), help="Also write CI files: plan on review, apply on merge."
)
@click.option("--default-branch", default="main", show_default=True, help="The branch whose merges apply.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(directory, mlproject, backend_config, ci, default_branch, force):
    """Write a commented mantik.yaml (and CI files), and keep .mantik/ out of git."""
    from .operations.init import init as write_files

    with user_errors():
        written = write_files(
            directory,
            mlproject=mlproject,
            backend_config=backend_config,
            ci=ci,
            force=force,
            default_branch=default_branch,
        )
    for path in written:
        click.echo(f"wrote {path}")
    click.echo("Next: fill in the grid values in mantik.yaml, then `mantik validate` and `mantik plan`.")


@main.command()
@PROJECT_DIR
@click.argument("experiment")
@click.option("--metric", help="The metric that ranks the points (default: the first one logged).")
@click.option(
    "--goal", type=click.Choice(["min", "max"]), default="min", show_default=True, help="Lower or higher is better."
)
@click.option(
    "--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), help="Also draw the metric to this PNG."
)
@click.option("--against", help="The parameter on the plot's x axis (default: the first that varies).")
def show(directory, experiment, metric, goal, plot_file, against):
    """An experiment's grid: parameters against final metrics, the best point marked."""
    from rich.markup import escape
    from rich.table import Table

    from .operations.project import open_project
    from .operations.show import grid, plot

    with user_errors():
        rows, metric = grid(open_project(directory), experiment, metric, goal)
        parameters = sorted({name for row in rows for name in row.parameters})
        metrics = sorted({name for row in rows for name in row.metrics})
        table = Table(box=None, pad_edge=False)
        for column in ("", *parameters, "state", *metrics):
            table.add_column(column)
        for row in rows:
            values = [f"{row.metrics[m]:.4g}" if m in row.metrics else "" for m in metrics]
            table.add_row(
                "*" if row.best else "", *(escape(row.parameters.get(p, "")) for p in parameters), row.state, *values
            )
        _table_console().print(table)
        if metric:
            click.echo(f"* best by {metric} ({goal})")
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

    def refresh(reason: str) -> list[str] | None:
        console.clear()
        console.print(f"[dim]mantik watch: {reason}; Ctrl-C stops[/dim]")
        try:
            code_paths = load_spec(root).spec.code.paths
        except SpecError as exc:
            for problem in exc.problems:
                click.echo(str(problem))
            return None
        _plan_once(root, and_apply)
        return code_paths

    code_paths = refresh("watching")
    for changed in changes(root, code_paths):
        names = ", ".join(sorted(Path(p).name for p in changed)[:3])
        code_paths = refresh(f"changed: {names}") or code_paths
    click.echo("Stopped watching.")


def _plan_once(root: Path, and_apply: bool) -> None:
    """One plan (and apply, when asked and the tree is clean), every error reported, none fatal."""
    from .operations import apply as operation
    from .operations.project import build_plan, open_project
    from .reconcile.render import render_text

    try:
        with user_errors():
            project = open_project(root)
            result, observation = build_plan(project)
            click.echo(render_text(result, color=sys.stdout.isatty()))
            if and_apply and result.has_changes and not observation.code.dirty:
                operation.apply(project, confirm=lambda plan: True, show=lambda plan: None)
                click.echo("Applied.")
    except SystemExit:
        pass  # the error was printed; keep watching


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

    with user_errors():
        holder = release(open_project(directory).store, lock_id)
    click.echo(f"Released the project lock {holder.lock_id} held by {holder.who}@{holder.host}.")


if __name__ == "__main__":  # pragma: no cover
    main()

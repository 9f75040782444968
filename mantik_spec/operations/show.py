"""``mantik show``: an experiment's grid, parameters against final metrics, best point marked; over seeds, one
row per parameter set with the mean, standard deviation and count of each metric, ranked by the mean."""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UserError
from ..spec.experiments import SEED_PARAMETER, format_value
from ..vocab import RowState
from .project import Project
from .status import RunTimes, status_rows


@dataclass
class GridRow:
    point: str
    parameters: dict
    state: RowState
    metrics: dict
    best: bool = False
    champion: str = ""  # the aliases of the spec's models that point at this row's run: ``wine@champion``
    times: RunTimes | None = None  # its queue wait and run time, when its runner recorded its job's start


@dataclass(frozen=True)
class Summary:
    """A metric over the finished seeds of one parameter set: NaN and infinite values left out."""

    mean: float | None  # None: no seed has a finite value
    sd: float | None  # the sample standard deviation (n - 1); None when n < 2
    n: int  # the values the mean is taken over


@dataclass
class SeedRow:
    """One parameter set of an experiment that declares ``seeds:``, its points (one per seed) summarised."""

    parameters: dict  # the values without the seed
    states: dict[RowState, int]  # how many of its seeds stand where
    metrics: dict[str, Summary] = field(default_factory=dict)
    best: bool = False


@dataclass(frozen=True)
class Ranking:
    metric: str | None  # None: no metric was named, so no point is marked best
    goal: str | None
    source: str  # how it was chosen, for the line under the table
    over_seeds: bool = False  # the rows are parameter sets ranked by the mean over their seeds
    champions: tuple[str, ...] = ()  # where each model of this experiment stands: ``wine@champion: v2 (POINT)``


def grid(
    project: Project, experiment: str, metric: str | None, goal: str | None = None, per_seed: bool = False
) -> tuple[list[GridRow] | list[SeedRow], Ranking]:
    """The experiment's points with their final metrics, the best one marked by the metric named with
    ``--metric``/``--goal``, else by the experiment's declared ``metric:``. Never by a guess: a metric's
    goal cannot be told from its name. An experiment that declares ``seeds:`` gives one row per parameter
    set, ranked by the mean over its seeds (:func:`over_seeds`), unless ``per_seed`` asks for every run.
    Raises :class:`UserError` for an unknown experiment or metric."""
    if experiment not in project.spec.experiments:
        raise UserError(f"no experiment '{experiment}' in mantik.yaml")
    rows = []
    held = champions(project, experiment)
    recorded = status_rows(project)
    now_ms = time.time() * 1000
    for row in recorded:
        if row.experiment != experiment:
            continue
        parameters = {name: format_value(value) for name, value in row.parameters.items()}
        marks = ", ".join(alias for alias, (_, run_id) in held.items() if run_id and run_id == row.run_id)
        rows.append(GridRow(row.point_id, parameters, row.state, row.metrics, champion=marks, times=row.times(now_ms)))
    points = {row.run_id: row.point_id for row in recorded}
    lines = tuple(
        f"{alias}: v{version} ({points.get(run_id or '', 'no run of this experiment')})"
        for alias, (version, run_id) in held.items()
    )
    ranking = replace(_ranking(project, experiment, metric, goal), champions=lines)
    names = sorted({name for row in rows for name in row.metrics})
    if ranking.metric is not None and names and ranking.metric not in names:
        raise UserError(f"no run of {experiment} logged a metric '{ranking.metric}'; logged: {', '.join(names)}")
    if _declares_seeds(project, experiment) and not per_seed:
        return over_seeds(rows, ranking), replace(ranking, over_seeds=True)
    scored = [row for row in rows if ranking.metric in row.metrics and is_result(row.metrics[ranking.metric])]
    if scored:
        pick = min if ranking.goal == "min" else max
        pick(scored, key=lambda row: row.metrics[ranking.metric]).best = True
    return rows, ranking


def champions(project: Project, experiment: str) -> dict[str, tuple[str, str | None]]:
    """``MODEL@ALIAS`` -> (version, its run id) for each model of the spec promoted from ``experiment`` whose alias
    is set in the registry (docs/models.md)."""
    from ..state.registry import alias_target

    found = {}
    for name, model in project.spec.models.items():
        if model.experiment == experiment:
            target = alias_target(project.store, name, model.alias)
            if target is not None:
                found[f"{name}@{model.alias}"] = target
    return found


def over_seeds(rows: list[GridRow], ranking: Ranking) -> list[SeedRow]:
    """The points grouped by their values without the seed, in the order first seen: each metric summarised
    over the group's finished runs (NaN and infinite values left out), the group with the best mean of
    ``ranking.metric`` marked. A group without a finite value is never marked, however lucky one seed was."""
    groups: dict[tuple, SeedRow] = {}
    values: dict[tuple, dict[str, list[float]]] = {}
    for row in rows:
        parameters = {name: value for name, value in row.parameters.items() if name != SEED_PARAMETER}
        key = tuple(sorted(parameters.items()))
        group = groups.setdefault(key, SeedRow(parameters, {}))
        group.states[row.state] = group.states.get(row.state, 0) + 1
        logged = values.setdefault(key, {})
        for name, value in row.metrics.items():
            finite = logged.setdefault(name, [])
            if row.state is RowState.FINISHED and is_result(value):
                finite.append(value)
    for key, group in groups.items():
        group.metrics = {name: summary(found) for name, found in sorted(values[key].items())}
    scored: list[tuple[float, SeedRow]] = []
    for group in groups.values():
        found = group.metrics.get(ranking.metric) if ranking.metric else None
        if found is not None and found.mean is not None:
            scored.append((found.mean, group))
    if scored:
        pick = min if ranking.goal == "min" else max
        pick(scored, key=lambda pair: pair[0])[1].best = True
    return list(groups.values())


def summary(values: list[float]) -> Summary:
    """The mean, sample standard deviation and count of finite ``values``."""
    return Summary(
        statistics.fmean(values) if values else None,
        statistics.stdev(values) if len(values) >= 2 else None,
        len(values),
    )


def _declares_seeds(project: Project, experiment: str) -> bool:
    from ..spec.experiments import resolve_extends

    return resolve_extends(project.spec)[0][experiment].seeds is not None


def is_result(value: float) -> bool:
    """Whether a metric's value can rank a run: NaN (a diverged loss) compares false with everything, so
    min/max would pick it by its place in the list, and an infinite value is no result either. MLflow's
    stores keep an infinite value as the largest float of its sign (``sanitize_metric_value`` in
    mlflow/store/tracking/sqlalchemy_store.py), so that reads back as infinite too."""
    return math.isfinite(value) and abs(value) < sys.float_info.max


def _ranking(project: Project, experiment: str, metric: str | None, goal: str | None) -> Ranking:
    from ..spec.experiments import resolve_extends

    declared = resolve_extends(project.spec)[0][experiment].metric
    if metric is None and goal is not None:
        metric = declared.name if declared else None
        if metric is None:
            raise UserError("--goal needs --metric NAME (or a metric: declared on the experiment)")
    if metric is not None:
        if goal is None:
            if declared is None or declared.name != metric:
                raise UserError(f"--metric {metric}: say whether lower or higher is better with --goal min|max")
            goal = declared.goal
        return Ranking(metric, goal, "--metric")
    if declared is not None:
        return Ranking(declared.name, declared.goal, f"experiments.{experiment}.metric")
    for name, model in project.spec.models.items():  # the metric a model of the experiment is promoted by
        if model.experiment == experiment:
            return Ranking(model.metric, "min" if model.goal == "minimize" else "max", f"models.{name}.metric")
    return Ranking(None, None, "")


def plot_axis(rows: list[GridRow] | list[SeedRow], against: str | None) -> str | None:
    """The parameter on the plot's x axis: ``against`` when named, else the first that varies, else the first."""
    parameters = sorted({name for row in rows for name in row.parameters})
    varying = [p for p in parameters if len({row.parameters.get(p) for row in rows}) > 1]
    return against or (varying[0] if varying else (parameters[0] if parameters else None))


def plot(rows: list[GridRow] | list[SeedRow], metric: str, parameter: str, path: Path) -> None:
    """The metric against one parameter, one line per combination of the others; over seeds, the mean with a
    band of one standard deviation either side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'mantik-spec[plot]'") from None
    series: dict[str, list[tuple[float, float, float]]] = {}  # (x, y, sd)
    varying = {
        k for k in {k for row in rows for k in row.parameters} if len({row.parameters.get(k) for row in rows}) > 1
    }
    for row in rows:
        value = _plotted(row, metric)
        if value is None or parameter not in row.parameters:
            continue
        others = ", ".join(f"{k}={v}" for k, v in sorted(row.parameters.items()) if k != parameter and k in varying)
        series.setdefault(others or metric, []).append((_number(row.parameters[parameter]), *value))
    if not series:
        raise UserError(f"nothing to plot: no finished run has both '{parameter}' and '{metric}'")
    banded = any(isinstance(row, SeedRow) for row in rows)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        line = axes.plot(xs, ys, marker="o", label=label)[0]
        if banded:
            low, high = [p[1] - p[2] for p in points], [p[1] + p[2] for p in points]
            axes.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for row in rows:
        value = _plotted(row, metric) if row.best and parameter in row.parameters else None
        if value is None:
            continue
        axes.scatter(
            [_number(row.parameters[parameter])],
            [value[0]],
            s=160,
            facecolors="none",
            edgecolors="crimson",
            linewidths=2,
            zorder=3,
            label="best",
        )
    values = [p[0] for points in series.values() for p in points]
    if min(values) > 0 and max(values) / min(values) >= 100:
        axes.set_xscale("log")
    axes.set_xlabel(parameter)
    axes.set_ylabel(f"{metric} (mean ± sd over seeds)" if banded else metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plotted(row: GridRow | SeedRow, metric: str) -> tuple[float, float] | None:
    """A row's point on the plot: its value and the half-height of its band (0: none); None when it has none."""
    if isinstance(row, SeedRow):
        found = row.metrics.get(metric)
        if found is None or found.mean is None:
            return None
        return found.mean, found.sd or 0.0
    return (row.metrics[metric], 0.0) if metric in row.metrics else None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"parameter value {text!r} is not a number: pick a numeric parameter to plot against") from None

"""``mantik show``: an experiment's grid, parameters against final metrics, best point marked."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..spec.experiments import format_value
from ..vocab import RowState
from .project import Project
from .status import status_rows


@dataclass
class GridRow:
    point: str
    parameters: dict
    state: RowState
    metrics: dict
    best: bool = False


@dataclass(frozen=True)
class Ranking:
    metric: str | None  # None: no metric was named, so no point is marked best
    goal: str | None
    source: str  # how it was chosen, for the line under the table


def grid(
    project: Project, experiment: str, metric: str | None, goal: str | None = None
) -> tuple[list[GridRow], Ranking]:
    """The experiment's points with their final metrics, the best one marked by the metric named with
    ``--metric``/``--goal``, else by the experiment's declared ``metric:``. Never by a guess: a metric's
    goal cannot be told from its name. Raises :class:`UserError` for an unknown experiment or metric."""
    if experiment not in project.spec.experiments:
        raise UserError(f"no experiment '{experiment}' in mantik.yaml")
    rows = []
    for row in status_rows(project):
        if row.experiment != experiment:
            continue
        parameters = {name: format_value(value) for name, value in row.parameters.items()}
        rows.append(GridRow(row.point_id, parameters, row.state, row.metrics))
    ranking = _ranking(project, experiment, metric, goal)
    names = sorted({name for row in rows for name in row.metrics})
    if ranking.metric is not None and names and ranking.metric not in names:
        raise UserError(f"no run of {experiment} logged a metric '{ranking.metric}'; logged: {', '.join(names)}")
    scored = [row for row in rows if ranking.metric in row.metrics and is_result(row.metrics[ranking.metric])]
    if scored:
        pick = min if ranking.goal == "min" else max
        pick(scored, key=lambda row: row.metrics[ranking.metric]).best = True
    return rows, ranking


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
    return Ranking(None, None, "")


def plot_axis(rows: list[GridRow], against: str | None) -> str | None:
    """The parameter on the plot's x axis: ``against`` when named, else the first that varies, else the first."""
    parameters = sorted({name for row in rows for name in row.parameters})
    varying = [p for p in parameters if len({row.parameters.get(p) for row in rows}) > 1]
    return against or (varying[0] if varying else (parameters[0] if parameters else None))


def plot(rows: list[GridRow], metric: str, parameter: str, path: Path) -> None:
    """The metric against one parameter, one line per combination of the others."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'mantik-spec[plot]'") from None
    series: dict[str, list[tuple[float, float]]] = {}
    varying = {
        k for k in {k for row in rows for k in row.parameters} if len({row.parameters.get(k) for row in rows}) > 1
    }
    for row in rows:
        if metric not in row.metrics or parameter not in row.parameters:
            continue
        others = ", ".join(f"{k}={v}" for k, v in sorted(row.parameters.items()) if k != parameter and k in varying)
        series.setdefault(others or metric, []).append((_number(row.parameters[parameter]), row.metrics[metric]))
    if not series:
        raise UserError(f"nothing to plot: no finished run has both '{parameter}' and '{metric}'")
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    best = [row for row in rows if row.best and parameter in row.parameters]
    for row in best:
        axes.scatter(
            [_number(row.parameters[parameter])],
            [row.metrics[metric]],
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
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"parameter value {text!r} is not a number: pick a numeric parameter to plot against") from None

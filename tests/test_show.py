"""``mantik show`` over seeds: parameter sets ranked by the mean of their seeds, never by one lucky run."""

from __future__ import annotations

import math
import statistics
import sys

from mantik_spec.operations.show import GridRow, Ranking, over_seeds
from mantik_spec.views.runs import grid_table
from mantik_spec.vocab import RowState

SCORE_MAX = Ranking("score", "max", "--metric")


def _runs(lr: str, scores: list[float], state: RowState = RowState.FINISHED) -> list[GridRow]:
    return [
        GridRow(f"sweep[lr={lr},seed={seed}]", {"lr": lr, "seed": str(seed)}, state, {"score": score})
        for seed, score in enumerate(scores)
    ]


def test_the_best_mean_is_starred_not_the_lucky_seed():
    lucky = _runs("0.1", [0.1, 0.2, 0.99])  # the single best run, in the set with the worse mean
    steady = _runs("0.2", [0.6, 0.7, 0.65])
    groups = over_seeds(lucky + steady, SCORE_MAX)
    assert [g.parameters for g in groups] == [{"lr": "0.1"}, {"lr": "0.2"}]
    assert [g.best for g in groups] == [False, True]
    found = groups[1].metrics["score"]
    assert found.n == 3 and math.isclose(found.mean, 0.65)
    assert math.isclose(found.sd, statistics.stdev([0.6, 0.7, 0.65]))  # the sample sd (n - 1)
    assert groups[1].states == {RowState.FINISHED: 3}
    for goal, best in (("min", [True, False]), ("max", [False, True])):
        assert [g.best for g in over_seeds(lucky + steady, Ranking("score", goal, "--metric"))] == best


def test_nan_and_infinite_seeds_are_left_out_and_a_set_without_a_finite_value_never_wins():
    diverged = _runs("0.1", [math.nan, math.inf, 5.0])  # one finite value: a mean, no sd
    lost = _runs("0.3", [math.nan, -math.inf, sys.float_info.max])  # MLflow's infinity: the largest float
    plain = _runs("0.2", [1.0, 2.0])
    for goal, best in (("max", "0.1"), ("min", "0.2")):
        groups = over_seeds(lost + diverged + plain, Ranking("score", goal, "--metric"))
        by_lr = {g.parameters["lr"]: g for g in groups}
        assert [lr for lr, g in by_lr.items() if g.best] == [best], goal
        assert by_lr["0.3"].metrics["score"].mean is None and by_lr["0.3"].metrics["score"].n == 0
        assert (by_lr["0.1"].metrics["score"].mean, by_lr["0.1"].metrics["score"].sd) == (5.0, None)
        assert by_lr["0.1"].metrics["score"].n == 1


def test_only_finished_seeds_count_and_no_metric_marks_nothing():
    running = _runs("0.1", [9.0], RowState.RUNNING) + _runs("0.1", [1.0])[:1]
    groups = over_seeds(running + _runs("0.2", [2.0]), SCORE_MAX)
    assert groups[0].states == {RowState.RUNNING: 1, RowState.FINISHED: 1}
    assert groups[0].metrics["score"].n == 1 and groups[1].best
    assert not any(g.best for g in over_seeds(running, Ranking(None, None, "")))


def test_the_seed_table_draws_mean_sd_and_n():
    from rich.console import Console

    groups = over_seeds(_runs("0.1", [1.0, 3.0]) + _runs("0.2", [math.nan, 4.0]), SCORE_MAX)
    console = Console(width=100, record=True, color_system=None)
    console.print(grid_table(groups, over_seeds=True))
    lines = console.export_text().splitlines()
    assert lines[0].split() == ["lr", "state", "score", "n"]
    assert lines[1].split() == ["0.1", "2", "finished", "2", "±", "1.414", "2"]
    assert lines[2].split() == ["*", "0.2", "2", "finished", "4", "1"]


def test_the_grid_shows_queue_wait_and_run_time_only_for_runs_whose_runner_recorded_its_start():
    from rich.console import Console

    from mantik_spec.operations.status import run_times

    def drawn(rows) -> list[str]:
        console = Console(width=120, record=True, color_system=None)
        console.print(grid_table(rows))
        return console.export_text().splitlines()

    old = GridRow("sweep[lr=0.1]", {"lr": "0.1"}, RowState.FINISHED, {"score": 0.5})
    assert drawn([old])[0].split() == ["lr", "state", "score"]  # as before
    timed = GridRow("sweep[lr=0.2]", {"lr": "0.2"}, RowState.FINISHED, {"score": 0.7})
    timed.times = run_times(0, 90_000, 90_000 + 7_200_000, 0)
    lines = drawn([old, timed])
    assert lines[0].split() == ["lr", "state", "queued", "ran", "score"]
    assert lines[2].split() == ["0.2", "finished", "1m30s", "2h00m", "0.7"]

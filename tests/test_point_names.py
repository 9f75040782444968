"""Naming a point by a unique subset of its values (``grid[C=0.1,seed=1]`` with defaults left out), as
--replace, logs, explain and cancel take it."""

from __future__ import annotations

from mantik_spec.spec.experiments import RunPoint, points_named


def point(experiment: str = "grid", seed: int | None = None, **parameters) -> RunPoint:
    return RunPoint(
        experiment=experiment,
        entry_point="train",
        backend="local",
        environment=None,
        parameters=tuple(sorted(parameters.items())),
        seed=seed,
        data=(),
        command_template="python train.py",
        retries=0,
        suspended=False,
    )


GRID = [point(C=c, kernel="rbf", tol=0.001, seed=s) for c in (0.1, 10.0, 100.0) for s in (0, 1)] + [
    point("other", C=0.1, kernel="rbf", tol=0.001, seed=0)
]


def ids(found: list[RunPoint]) -> list[str]:
    return [p.point_id for p in found]


def test_a_whole_point_id_names_its_point():
    whole = GRID[0].point_id
    assert whole == "grid[C=0.1,kernel=rbf,tol=0.001,seed=0]"
    assert ids(points_named(GRID, whole)) == [whole]


def test_a_unique_subset_names_its_point_and_defaults_may_be_left_out():
    assert ids(points_named(GRID, "grid[C=0.1,seed=1]")) == ["grid[C=0.1,kernel=rbf,tol=0.001,seed=1]"]
    assert ids(points_named(GRID, "grid[seed=1,C=.1]")) == [
        "grid[C=0.1,kernel=rbf,tol=0.001,seed=1]"
    ]  # any order, by value
    assert ids(points_named(GRID, "grid[C=10,seed=0]")) == ["grid[C=10.0,kernel=rbf,tol=0.001,seed=0]"]


def test_a_subset_naming_several_points_or_none_is_said_so():
    assert len(points_named(GRID, "grid[C=0.1]")) == 2  # both seeds: the caller asks for more values
    assert points_named(GRID, "grid[C=1.0]") == []
    assert points_named(GRID, "grid[gamma=1]") == []  # no such parameter
    assert points_named(GRID, "grid[C]") == []
    assert points_named(GRID, "grid") == []  # an experiment is not a point
    assert ids(points_named(GRID, "other[C=0.1]")) == ["other[C=0.1,kernel=rbf,tol=0.001,seed=0]"]
    assert points_named(GRID, "grid[kernel=True]") == []  # text is compared as written

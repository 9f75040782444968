"""Trials of parallel applies: the guarantee that no run key is submitted twice, measured as
docs/reliability.md reports it."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter

from ..conftest import IN_CI, run_mantik_together

PARALLEL = 8
# CI runs the count docs/reliability.md quotes; locally a few trials exercise the same path
# 5 per store under CI=true keep the whole suite well inside CI's time; the figures of docs/reliability.md were
# measured with MANTIK_RELIABILITY_TRIALS=20
TRIALS = int(os.environ.get("MANTIK_RELIABILITY_TRIALS", "5" if IN_CI else "3"))


def parallel_applies(project, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """PARALLEL applies of one spec started together, as merges queued by no CI would run them."""
    apply = ["apply", "--auto-approve", "--lock-timeout", "600s"]
    return run_mantik_together([apply] * PARALLEL, project.path, {**project.env, **(env or {})})


def runs_by_key(tracking_uri: str, status: str | None = None) -> Counter:
    """How many MLflow runs each run key has (with ``status``: only runs in that status)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=50000) if experiments else []
    return Counter(
        r.data.tags["mantik.run_key"]
        for r in runs
        if "mantik.run_key" in r.data.tags and (status is None or r.info.status == status)
    )


def trial_spec(base: str, trial: int) -> str:
    """Three new grid points per trial, so every trial submits fresh run keys."""
    values = ", ".join(f"{trial + point / 10:.1f}" for point in (1, 2, 3))
    return base.replace("[0.1, 0.2]", f"[{values}]").replace("[0.1, 0.2, 0.3]", f"[{values}]")


def check_trials(project, spec: str, tracking_uri: str, env: dict | None = None, trials: int = TRIALS) -> dict:
    """Run ``trials`` rounds of parallel applies; return what the doc reports."""
    project.write("mantik.yaml", trial_spec(spec, 1000))  # the baseline: one apply, nobody to wait for
    project.commit("baseline")
    started = time.perf_counter()
    project.mantik("apply", "--auto-approve", env=env)
    single = time.perf_counter() - started
    duplicates, seconds = 0, []
    for trial in range(trials):
        project.write("mantik.yaml", trial_spec(spec, trial))
        project.commit(f"trial {trial}")
        started = time.perf_counter()
        results = parallel_applies(project, env)
        seconds.append(time.perf_counter() - started)
        assert [r.returncode for r in results] == [0] * PARALLEL, [r.stderr for r in results if r.returncode]
        submitters = [r for r in results if "Apply complete: 3 run(s) started." in r.stdout]
        assert len(submitters) == 1, [r.stdout for r in results]  # the others found nothing left to do
        counts = runs_by_key(tracking_uri)
        duplicates += sum(count - 1 for count in counts.values())
    assert duplicates == 0
    figures = {
        "trials": trials,
        "duplicates": duplicates,
        "one apply alone (s)": round(single, 2),
        f"{PARALLEL} applies at once (s)": round(sum(seconds) / len(seconds), 2),
    }
    if os.environ.get("MANTIK_RELIABILITY_REPORT"):  # the figures of docs/reliability.md
        with open(os.environ["MANTIK_RELIABILITY_REPORT"], "a") as report:
            report.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}: {figures}\n")
    return figures

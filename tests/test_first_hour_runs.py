"""Runs named the way `status` shows them, and failures that explain themselves."""

from __future__ import annotations

import json

from .conftest import BASIC_SPEC


def test_status_ids_work_everywhere_a_run_is_named(project):
    project.mantik("apply", "--auto-approve", "--wait")
    rows = project.status_json()
    run_id = rows[0]["run_id"]
    point = rows[0]["point_id"]
    job = rows[0]["job_id"]
    for reference in (run_id, run_id[:12], run_id[:6], point, job):
        explained = json.loads(project.mantik("explain", reference).stdout)
        assert explained.get("run_id", run_id) == run_id or explained["point"] == point, reference
        assert b"trained" in project.mantik("logs", reference).stdout.encode(), reference
    missing = project.mantik("logs", "zzzz", check=1)
    assert missing.stderr.count("\n") == 1 and "point id as `mantik status` shows" in missing.stderr


def test_ambiguous_prefix_names_the_candidates(project):
    project.mantik("apply", "--auto-approve", "--wait")
    ids = [row["run_id"] for row in project.status_json()]
    common = 0
    while common < len(ids[0]) and ids[0][common] == ids[1][common]:
        common += 1
    if common >= 4:  # two uuids sharing 4+ leading characters: the prefix is ambiguous
        result = project.mantik("logs", ids[0][:common], check=1)
        assert "names runs of 2 points" in result.stderr
    result = project.mantik("logs", "", check=1)
    assert result.stderr.startswith("Error: no run")


def test_wait_lists_each_failure_with_its_last_line_and_the_next_command(project):
    project.write(
        "train.py",
        """
        import sys
        args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
        print("epoch 1")
        raise ValueError(f"loss is nan at lr={args['--lr']}")
        """,
    )
    project.commit("a training script that diverges")
    result = project.mantik("apply", "--auto-approve", "--wait", check=1)
    assert "2 run(s) did not finish successfully:" in result.stderr
    lines = sorted(line for line in result.stderr.splitlines() if line.startswith("  x "))
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("  x sweep[") and "lr=0.1" in lines[0]
    assert lines[0].endswith("ValueError: loss is nan at lr=0.1"), lines[0]
    assert lines[1].endswith("ValueError: loss is nan at lr=0.2"), lines[1]
    assert "mantik logs " in result.stderr.splitlines()[-1]


def test_wait_in_a_log_prints_lines_as_runs_change(project):
    """Not on a terminal (a CI log): a line per change of the counts, never hours of silence."""
    project.write("mantik.yaml", BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1], sleep: [2]}"))
    project.commit("slower")
    result = project.mantik("apply", "--auto-approve", "--wait")
    progress = [line for line in result.stdout.splitlines() if "] runs: " in line]
    assert progress and progress[-1].endswith("1 finished"), result.stdout
    assert len(progress) >= 2, result.stdout


def test_plan_says_failed_points_need_a_change_and_ci_can_fail_on_them(project):
    project.write("mantik.yaml", BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1], fail: [true]}"))
    project.commit("a point that fails")
    project.mantik("apply", "--auto-approve", "--wait", check=1)
    result = project.mantik("plan", "--detailed-exitcode")
    assert "No changes" not in result.stdout
    assert "Nothing to submit, but 1 point(s) failed with no retries left" in result.stdout
    project.mantik("plan", "--detailed-exitcode", "--fail-on-failed", check=3)
    markdown = project.mantik("plan", "--format", "markdown", "--fail-on-failed", check=3).stdout
    assert "1 point(s) failed" in markdown


def _on_terminal(project, *args: str, columns: int = 80) -> str:
    """The command's output as a user sees it on a terminal of ``columns`` columns (a real pty)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    from .conftest import mantik_command

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**project.env, "TERM": "dumb", "NO_COLOR": "1"}
    env.pop("COLUMNS", None)
    process = subprocess.Popen(
        [*mantik_command(), *args], cwd=project.path, stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the command ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=120)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_status_at_80_columns_keeps_the_varying_parameters_visible(project):
    spec = BASIC_SPEC.replace(
        "parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.001, 0.01, 0.1], sleep: [0.25, 0.5]}"
    )
    project.write("mantik.yaml", spec)
    project.commit("a 3 x 2 grid")
    project.mantik("apply", "--auto-approve", "--wait")
    screen = _on_terminal(project, "status")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), screen
    header = lines[0].split()
    assert header[:2] == ["lr", "sleep"], screen
    shown = {tuple(line.split()[:2]) for line in lines[1:]}
    assert shown == {(lr, s) for lr in ("0.001", "0.01", "0.1") for s in ("0.25", "0.5")}, screen
    assert all("finished" in line for line in lines[1:])


def test_a_large_plan_is_grouped_and_v_lists_every_run(project):
    spec = BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1, 0.2], sleep: [0, 1, 2, 3, 4]}")
    spec += "  longer:\n    extends: sweep\n    parameters: {lr: [0.3, 0.4, 0.5, 0.6], sleep: [5, 6, 7, 8]}\n"
    project.write("mantik.yaml", spec)
    project.commit("26 points")
    grouped = project.mantik("plan").stdout
    assert "(26 runs; `mantik plan -v` lists each)" in grouped
    assert "  + sweep: 10 to submit  [local]" in grouped and "  + longer: 16 to submit  [local]" in grouped
    assert "      10 × new run point" in grouped
    assert len(grouped.splitlines()) < 15, grouped
    every = project.mantik("plan", "-v").stdout
    assert sum(1 for line in every.splitlines() if line.startswith("  + ")) == 26


def test_show_ranks_by_the_declared_metric_and_never_guesses(project):
    """The score (lr * 10) is better when higher: a guessed `min` would star the worst point."""
    project.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    unranked = project.mantik("show", "sweep").stdout
    assert not any(line.startswith("*") for line in unranked.splitlines())
    assert "No point marked best: name the metric with --metric NAME --goal min|max" in unranked
    project.mantik("show", "sweep", "--metric", "score", check=1)  # a goal is never assumed
    spec = BASIC_SPEC.replace(
        "parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1, 0.2]}\n    metric: {name: score, goal: max}"
    )
    project.write("mantik.yaml", spec)
    project.commit("declare how the sweep is judged")
    assert "No changes" in project.mantik("plan").stdout  # the metric is not part of any run key
    ranked = project.mantik("show", "sweep").stdout
    best = [line for line in ranked.splitlines() if line.startswith("*") and "finished" in line]
    assert len(best) == 1 and " 0.2 " in best[0], ranked
    assert "* best by score (max; from experiments.sweep.metric)" in ranked


def test_show_never_stars_a_nan_or_infinite_metric(project):
    """A diverged run's NaN loss (or an infinite one) is no result: the best finite value is starred, for
    either goal and whichever order the runs come in."""
    project.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})  # score = lr * 10
    client = project.client()
    [diverged] = [run for run in project.runs() if run.data.params["lr"] == "0.1"]
    for value in (float("nan"), float("-inf"), float("inf")):
        client.log_metric(diverged.info.run_id, "score", value, step=1)  # the last value is the final one
        for goal in ("min", "max"):
            shown = project.mantik("show", "sweep", "--metric", "score", "--goal", goal).stdout
            best = [line for line in shown.splitlines() if line.startswith("*") and "finished" in line]
            assert len(best) == 1 and " 0.2 " in best[0], (value, goal, shown)


def test_cancelled_is_its_own_outcome_and_replace_runs_the_point_again(project):
    spec = BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1], sleep: [60]}\n    retries: 2")
    project.write("mantik.yaml", spec)
    project.commit("a long run")
    project.mantik("apply", "--auto-approve")
    point = project.status_json()[0]["point_id"]
    project.mantik("cancel", point)
    assert project.status_json()[0]["state"] == "cancelled"
    plan = project.mantik("plan", "--detailed-exitcode").stdout  # exit 0: nothing to do, retries untouched
    assert "failed" not in plan and "Cancelled with `mantik cancel`" in plan and f"  / {point}" in plan
    assert [r["action"] for r in project.plan_json()["runs"]] == ["cancelled"]
    unknown = project.mantik("apply", "--auto-approve", "--replace", "sweep[lr=9]", check=1)
    assert unknown.stderr.startswith("Error: --replace sweep[lr=9]: no such declared point")
    replaced = project.mantik("apply", "--auto-approve", "--replace", point)
    assert "replaced on request" in replaced.stdout
    names = sorted(run.data.tags["mlflow.runName"] for run in project.runs())
    assert names == [point, f"{point} (attempt 2)"]
    project.mantik("cancel", point)


def test_points_are_named_by_a_unique_subset_and_replace_experiment_reruns_its_failed_points(project):
    spec = BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: [0.1], fail: [false, true]}")
    project.write("mantik.yaml", spec)
    project.commit("one point fails")
    project.mantik("apply", "--auto-approve", "--wait", check=1)
    for reference in ("sweep", "sweep[fail=True]", "sweep[fail=true,lr=.1]"):
        plan = project.plan_json("--replace", reference)
        submits = [(r["point"], r["reason"]) for r in plan["runs"] if r["action"] == "submit"]
        assert submits == [("sweep[fail=True,lr=0.1,sleep=0.0]", submits[0][1])], (reference, plan["runs"])
        assert "replaced on request" in submits[0][1]
    several = project.mantik("plan", "--replace", "sweep[lr=0.1]", check=1)
    assert several.stderr.startswith("Error: --replace sweep[lr=0.1] names 2 points (")
    assert "give more values" in several.stderr
    assert "trained" in project.mantik("logs", "sweep[fail=False]").stdout


def test_show_over_seeds_ranks_parameter_sets_by_their_mean(project):
    """Three seeds per learning rate: the single best run (a lucky seed of lr=0.1) does not win; the better
    mean (lr=0.2) does, a NaN seed left out of its set's mean and n, and --per-seed stars the lucky run."""
    seeded = "parameters: {lr: [0.1, 0.2]}\n    seeds: 3\n    seed_from_env: true"
    spec = BASIC_SPEC.replace("parameters: {lr: [0.1, 0.2]}", seeded)
    project.write("mantik.yaml", spec)
    project.commit("three seeds per point")
    project.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})  # score = lr * 10
    client = project.client()
    scores = {("0.1", 0): 1.0, ("0.1", 1): float("nan"), ("0.1", 2): 2.9}  # the best run, the worse mean
    scores |= {("0.2", 0): 2.0, ("0.2", 1): 2.0, ("0.2", 2): 2.5}
    for row in project.status_json():
        value = scores[(str(row["parameters"]["lr"]), row["parameters"]["seed"])]
        client.log_metric(row["run_id"], "score", value, step=1)  # the last value is the final one
    shown = project.mantik("show", "sweep", "--metric", "score", "--goal", "max", "--plot", "seeds.png").stdout
    lines = shown.splitlines()
    assert lines[0].split() == ["fail", "lr", "sleep", "state", "score", "n"], shown
    assert lines[1].split() == ["False", "0.1", "0.0", "3", "finished", "1.95", "±", "1.344", "2"], shown
    assert lines[2].split() == ["*", "False", "0.2", "0.0", "3", "finished", "2.167", "±", "0.2887", "3"], shown
    assert "* best mean of score over seeds (max; from --metric)" in shown
    assert (project.path / "seeds.png").read_bytes().startswith(b"\x89PNG")
    per_seed = project.mantik("show", "sweep", "--metric", "score", "--goal", "max", "--per-seed").stdout
    best = [line for line in per_seed.splitlines() if line.startswith("*") and "finished" in line]
    assert len(best) == 1 and best[0].split()[1:3] == ["False", "0.1"] and best[0].split()[-1] == "2.9", per_seed
    assert "* best by score (max; from --metric)" in per_seed

"""The Slurm backend over SSH: a real sshd on 127.0.0.1 (keys made here) in front of the real
single-node Slurm, driven by the installed `mantik`, as from a laptop or a CI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .support.slurm import squeue_state
from .support.sshd import ssh_spec, sshd_of_the_module  # noqa: F401  (the module's sshd fixture)

pytestmark = pytest.mark.e2e


@pytest.fixture
def over_ssh(project, sshd, tmp_path):
    sshd.record_host_key("hostkey")
    project.workdir = tmp_path / "cluster-workdir"
    project.write("mantik.yaml", ssh_spec(sshd, project.workdir))
    project.commit("slurm over ssh")
    yield project
    sshd.close_connection()  # each test connects afresh


def ssh_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "ssh connection(s) opened" in line)


def test_grid_runs_as_an_array_over_one_connection(over_ssh, sshd):
    before = sshd.logins()
    result = over_ssh.mantik("-v", "apply", "--auto-approve")
    assert "1 ssh connection(s) opened" in ssh_line(result.stderr)
    assert sshd.logins() - before == 1  # every command of the apply went through one connection
    assert "1 sbatch" in result.stderr
    over_ssh.wait_until(
        lambda: sorted(r.info.status for r in over_ssh.runs()) == ["FINISHED"] * 3, timeout=120, message="3 finished"
    )
    again = over_ssh.mantik("-v", "apply", "--auto-approve")
    assert "No changes" in again.stdout
    assert "sbatch" not in again.stderr


def test_a_staged_commit_is_not_sent_again(over_ssh, sshd):
    first = over_ssh.mantik("-v", "apply", "--auto-approve")
    assert "1 code tree(s) sent" in ssh_line(first.stderr)
    over_ssh.wait_until(lambda: all(r.info.status == "FINISHED" for r in over_ssh.runs()), timeout=120)
    over_ssh.write("mantik.yaml", ssh_spec(sshd, over_ssh.workdir, lrs="[0.1, 0.2, 0.3, 0.4]"))
    over_ssh.commit("one more point")
    second = over_ssh.mantik("-v", "apply", "--auto-approve")
    assert "1 code tree(s) sent" in ssh_line(second.stderr)  # a new commit is staged once
    over_ssh.wait_until(lambda: len(over_ssh.runs()) == 4, timeout=60)
    (run,) = [r for r in over_ssh.runs() if r.data.params.get("lr") == "0.4"]
    job_id = run.data.tags["mantik.job_id"]
    subprocess.run(["scancel", job_id.split("_")[0]], check=True)
    over_ssh.wait_until(lambda: squeue_state(job_id) in ("", "CANCELLED"), timeout=60)
    plan = over_ssh.plan_json()
    # "!" when the plan sees the job gone while the run is open, "x" when the runner closed the run on the
    # signal first (no retries are declared): either way no code is staged again for this commit
    assert [e["symbol"] for e in plan["runs"] if e["parameters"]["lr"] == 0.4] in (["!"], ["x"])
    third = over_ssh.mantik("-v", "apply", "--auto-approve")  # at the same commit
    assert "0 code tree(s) sent" in ssh_line(third.stderr)


def test_changed_host_key_is_refused(over_ssh, sshd):
    sshd.record_host_key("otherhostkey")
    result = over_ssh.mantik("apply", "--auto-approve", check=1)
    assert "the host key of 127.0.0.1 has changed" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_host_key_is_refused_not_accepted(over_ssh, sshd):
    sshd.known_hosts.write_text("")
    result = over_ssh.mantik("apply", "--auto-approve", check=1)
    assert "the host key of 127.0.0.1 is not in known_hosts" in result.stderr
    assert sshd.known_hosts.read_text() == ""  # nothing was added behind the user's back


def test_wrong_key_is_refused_with_a_clear_error(over_ssh, sshd):
    over_ssh.write("mantik.yaml", ssh_spec(sshd, over_ssh.workdir, key="otherkey"))
    over_ssh.commit("the wrong key")
    result = over_ssh.mantik("apply", "--auto-approve", check=1)
    assert "127.0.0.1 refused the authentication" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_host_is_one_line(over_ssh, sshd):
    spec = ssh_spec(sshd, over_ssh.workdir).replace(f"port: {sshd.port}", "port: 9")
    over_ssh.write("mantik.yaml", spec)
    over_ssh.commit("nobody listens there")
    result = over_ssh.mantik("apply", "--auto-approve", check=1)
    assert "cannot reach 127.0.0.1" in result.stderr


def test_unwritable_workdir_is_one_line(over_ssh, sshd, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    over_ssh.write("mantik.yaml", ssh_spec(sshd, blocked / "workdir"))
    over_ssh.commit("workdir under a file")
    result = over_ssh.mantik("apply", "--auto-approve", check=1)
    assert f"cannot create {blocked / 'workdir'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_relative_workdir_and_tracking_credentials_over_ssh(over_ssh, sshd):
    relative = f".mantik-ssh-test-{os.getpid()}"  # taken from the remote home
    token = "token-for-the-job-only"
    spec = ssh_spec(sshd, Path(relative), lrs="[0.1]").replace(
        "command: python train.py", 'command: test -n "$MLFLOW_TRACKING_TOKEN" && python train.py'
    )
    over_ssh.write("mantik.yaml", spec)
    over_ssh.commit("relative workdir")
    remote = Path.home() / relative  # the sshd runs on this machine, as this user
    try:
        over_ssh.mantik("apply", "--auto-approve", env={"MLFLOW_TRACKING_TOKEN": token})
        over_ssh.wait_until(lambda: [r.info.status for r in over_ssh.runs()] in (["FINISHED"], ["FAILED"]), timeout=120)
        assert [r.info.status for r in over_ssh.runs()] == ["FINISHED"]  # the job saw the token
        written = [p for p in remote.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
        assert written == []  # it reached the job through sbatch's environment, not a file
    finally:
        shutil.rmtree(remote, ignore_errors=True)

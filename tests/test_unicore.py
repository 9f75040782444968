"""The UNICORE backend, end to end: the real `mantik` command and the real pyunicore client against
a fake UNICORE site on 127.0.0.1 that runs the jobs as local processes (tests/fake_unicore.py)."""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading

import pytest

from .conftest import ROOT, Project, git
from .fake_unicore import FakeUnicore
from .support.listener import Listener
from .support.project import dvc, peak_rss_kib, settle
from .support.specs import FULL_MANTIK_CONFIG, JUWELS, MAELSTROM_CONFIG, unicore_spec

USER, PASSWORD = "alice", "wonderland"
CREDENTIALS = {"MANTIK_UNICORE_USERNAME": USER, "MANTIK_UNICORE_PASSWORD": PASSWORD}
# the runner's Python without site-packages: a compute node that has no mlflow, as if it were offline
OFFLINE_PYTHON = f"{sys.executable} -S"


@pytest.fixture
def site(tmp_path):
    with FakeUnicore(tmp_path / "site", users={USER: PASSWORD}, tokens={"tok-123"}) as fake:
        fake.queue_seconds = 0.1
        yield fake


@pytest.fixture
def on_unicore(project, site):
    project.env.update(CREDENTIALS)
    project.env["PATH"] = f"{sys.executable.rsplit('/', 1)[0]}:{project.env['PATH']}"  # `python` in the command
    project.write("mantik.yaml", unicore_spec(site.url))
    project.commit("run on unicore")
    return project


def submissions(site) -> list:
    return [r for r in site.requests if r[0] == "POST" and r[1].endswith("/jobs")]


def test_grid_runs_to_finished_and_a_second_apply_submits_nothing(on_unicore, site):
    on_unicore.mantik("apply", "--auto-approve")
    assert len(submissions(site)) == 2
    settle(on_unicore)
    runs = on_unicore.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    for run in runs:
        job_url = run.data.tags["mantik.job_id"]
        assert job_url.startswith(site.url + "/jobs/")
        # the runner records the run's end before its process exits: the job ends a moment later
        assert wait_for_end(site, job_url).status == "SUCCESSFUL"
        assert f"mantik-run-{run.info.run_id}" in site.job_by_url(job_url).tags
        assert site.job_by_url(job_url).batch["SLURM_JOB_NAME"] == "mantik.sweep"  # not renamed UNICORE_job
    on_unicore.mantik("apply", "--auto-approve")
    assert len(submissions(site)) == 2  # nothing new: every run key has its finished run


def test_offline_compute_node_is_settled_from_the_job_state_with_its_output(on_unicore, site):
    on_unicore.write("mantik.yaml", unicore_spec(site.url, python=OFFLINE_PYTHON))
    on_unicore.commit("offline compute nodes")
    on_unicore.mantik("apply", "--auto-approve")
    on_unicore.wait_until(
        lambda: all(site.job_by_url(url).status == "SUCCESSFUL" for url in site.job_urls()), message="jobs done"
    )
    assert {r.info.status for r in on_unicore.runs()} == {"SCHEDULED"}  # the runner could not report
    plan = on_unicore.plan_json()
    assert {e["symbol"] for e in plan["runs"]} == {"!"}
    assert all("recording FINISHED" in e["reason"] for e in plan["runs"])
    on_unicore.mantik("apply", "--auto-approve")
    client = on_unicore.client()
    for run in on_unicore.runs():
        assert run.info.status == "FINISHED"
        output = client.download_artifacts(run.info.run_id, "mantik/output.log")
        assert "trained" in open(output).read()


def test_a_job_the_site_deleted_at_its_termination_time_says_so_in_the_plan(on_unicore, site):
    on_unicore.write("mantik.yaml", unicore_spec(site.url, python=OFFLINE_PYTHON))
    on_unicore.commit("offline compute nodes")
    on_unicore.mantik("apply", "--auto-approve")
    on_unicore.wait_until(lambda: all(site.job_by_url(u).ended for u in site.job_urls()), message="jobs done")
    for url in site.job_urls():
        site.expire(url)  # nobody looked for longer than the job's lifetime
    plan = on_unicore.plan_json()
    assert {e["symbol"] for e in plan["runs"]} == {"!"}
    assert all("ended LOST" in e["reason"] and "termination time" in e["reason"] for e in plan["runs"]), plan


def test_failing_job_fails_its_run_with_the_sites_word(on_unicore, site):
    on_unicore.write(
        "mantik.yaml",
        unicore_spec(site.url, python=OFFLINE_PYTHON).replace("{lr: [0.1, 0.2]}", "{lr: 0.1, fail: true}"),
    )
    on_unicore.commit("a failing run")
    on_unicore.mantik("apply", "--auto-approve")
    on_unicore.wait_until(lambda: site.job_by_url(site.job_urls()[0]).status == "FAILED", message="job failed")
    plan = on_unicore.plan_json()
    assert plan["runs"][0]["symbol"] == "!"
    assert "ended FAILED (exit 3)" in plan["runs"][0]["reason"]
    on_unicore.mantik("apply", "--auto-approve")
    (run,) = on_unicore.runs()
    assert run.info.status == "FAILED"
    assert "exit 3" in run.data.tags["mantik.failure"]


def test_cancel_aborts_the_job(on_unicore, site):
    site.queue_seconds = 60
    on_unicore.mantik("apply", "--auto-approve")
    on_unicore.mantik("cancel", "sweep")
    assert len([r for r in site.requests if r[1].endswith("/actions/abort")]) == 2
    on_unicore.wait_until(
        lambda: all(site.job_by_url(url).status == "FAILED" for url in site.job_urls()), message="jobs aborted"
    )
    assert {r.info.status for r in on_unicore.runs()} == {"KILLED"}


def test_wrong_password_is_one_clear_line_and_nothing_stays_open(on_unicore, site):
    result = on_unicore.mantik("apply", "--auto-approve", check=1, env={"MANTIK_UNICORE_PASSWORD": "nope"})
    assert "authentication failed at " + site.url in result.stderr
    assert "Traceback" not in result.stderr
    assert submissions(site) == []
    assert {r.info.status for r in on_unicore.runs()} == {"FAILED"}  # refused: spends no retry
    on_unicore.mantik("apply", "--auto-approve")
    assert len(submissions(site)) == 2


def test_missing_credentials_name_the_variables(on_unicore, site):
    result = on_unicore.mantik("plan", check=None, env={"MANTIK_UNICORE_PASSWORD": ""})
    on_unicore.mantik("apply", "--auto-approve", check=1, env={"MANTIK_UNICORE_PASSWORD": ""})
    assert result.returncode == 0  # nothing live to ask about: plan needs no credentials
    result = on_unicore.mantik("apply", "--auto-approve", check=1, env={"MANTIK_UNICORE_PASSWORD": ""})
    assert "set MANTIK_UNICORE_USERNAME and MANTIK_UNICORE_PASSWORD" in result.stderr


def test_server_error_carries_the_sites_message_and_the_next_apply_recovers(on_unicore, site):
    site.fail_next(count=1, status=500, message="queue booster is closed", path_contains="/jobs")
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "the UNICORE site answered 500: queue booster is closed" in result.stderr
    assert "Traceback" not in result.stderr
    on_unicore.mantik("apply", "--auto-approve")
    settle(on_unicore)
    assert sorted(r.info.status for r in on_unicore.runs()).count("FINISHED") == 2


@pytest.mark.parametrize("fault", ["late answer", "answer lost"])
def test_a_submission_without_an_answer_is_resolved_by_looking_not_refused(on_unicore, site, fault):
    # the site creates the job, then its answer comes after the client's 5 s timeout, or never
    if fault == "late answer":
        site.hang_next(8, count=1, path_contains="/jobs")
    else:
        site.drop_next(count=1, path_contains="/jobs", after_handling=True)
    on_unicore.mantik("apply", "--auto-approve")  # found by its tag at once: recorded, not refused
    assert len(site.job_urls()) == 2
    assert all(r.data.tags.get("mantik.job_id") for r in on_unicore.runs())
    assert all(e["symbol"] != "+" for e in on_unicore.plan_json()["runs"])
    on_unicore.mantik("apply", "--auto-approve")
    settle(on_unicore)
    assert sorted(r.info.status for r in on_unicore.runs()) == ["FINISHED", "FINISHED"]
    jobs_per_key = [site.job_by_url(url).tags for url in site.job_urls()]
    assert len(jobs_per_key) == 2  # one job per run key


def test_a_5xx_answer_to_a_submission_is_not_taken_as_a_refusal(on_unicore, site):
    # a 500 may come after the job was stored: the run stays open and is adopted, never run twice
    one_point = unicore_spec(site.url).replace("parameters: {lr: [0.1, 0.2]}", "parameters: {lr: 0.1}")
    on_unicore.write("mantik.yaml", one_point)
    on_unicore.commit("one point")
    site.fail_next(count=1, status=500, message="Could not submit job: database timeout", path_contains="/jobs")
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "the UNICORE site answered 500: Could not submit job" in result.stderr
    assert "may have been submitted" in result.stderr
    (run,) = on_unicore.runs()
    assert run.info.status == "SCHEDULED" and "mantik.failure" not in run.data.tags  # open, not refused
    settle(on_unicore)  # no job has its tag: the intent is closed and the point submitted once
    assert sorted(r.info.status for r in on_unicore.runs()) == ["FAILED", "FINISHED"]
    assert len(site.job_urls()) == 1


def test_crash_after_submission_is_adopted(on_unicore, site):
    site.queue_seconds = 5  # the jobs are still queued when the next plan looks
    result = on_unicore.mantik("apply", "--auto-approve", check=None, env={"MANTIK_TEST_CRASH_AT": "after-submit"})
    assert result.returncode != 0
    assert len(site.job_urls()) == 2
    plan = on_unicore.plan_json()
    assert all("found on the backend but not recorded; adopting it" in e["reason"] for e in plan["runs"]), plan
    settle(on_unicore)
    assert len(site.job_urls()) == 2
    assert sorted(r.info.status for r in on_unicore.runs()) == ["FINISHED", "FINISHED"]


def test_staged_code_is_the_committed_tree_minus_exclusions(on_unicore, site):
    on_unicore.write("model.ckpt", "weights")
    on_unicore.write("data/big.csv", "1,2,3")
    on_unicore.write("src/util.py", "x = 1")
    on_unicore.write(
        "mantik.yaml",
        unicore_spec(site.url, extra='    exclude: ["*.ckpt", "data/"]').replace(
            "parameters: {lr: [0.1, 0.2]}", "parameters: {lr: 0.1}"
        ),
    )
    on_unicore.commit("more files")
    on_unicore.write("untracked.txt", "not committed")
    on_unicore.mantik("apply", "--auto-approve")
    settle(on_unicore)
    (url,) = site.job_urls()
    work = site.job_by_url(url).workdir / "work"
    shipped = sorted(
        p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file() and not p.name.startswith("output")
    )
    committed = git(on_unicore.path, "ls-files").split()
    excluded = ("model.ckpt", "data/big.csv", "mantik.yaml")  # the spec is not code: jobs do not need it
    expected = sorted(f for f in committed if f not in excluded)
    assert shipped == expected
    assert "untracked.txt" not in shipped


def test_code_is_staged_once_per_content(on_unicore, site):
    on_unicore.mantik("apply", "--auto-approve")
    uploads = [r for r in site.requests if r[0] == "PUT" and "/storages/HOME/files/" in r[1]]
    assert len(uploads) == 1  # two runs of one commit share one archive
    settle(on_unicore)
    on_unicore.write("mantik.yaml", unicore_spec(site.url).replace("[0.1, 0.2]", "[0.1, 0.2, 0.3]"))
    on_unicore.commit("one more point, same code")  # a new commit, but the code did not change
    on_unicore.mantik("apply", "--auto-approve")
    uploads = [r for r in site.requests if r[0] == "PUT" and "/storages/HOME/files/" in r[1]]
    assert len(uploads) == 1  # already at the site, complete: not sent again


def test_data_must_be_pushed_and_the_job_reads_it_from_the_remote(on_unicore, site, tmp_path):
    dvc(on_unicore, "init", "-q")
    on_unicore.write("data/era5.csv", "t,value\n0,1.0\n")
    dvc(on_unicore, "add", "data/era5.csv")
    dvc(on_unicore, "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"))
    on_unicore.write(
        "mantik.yaml",
        f"""
        project: demo
        entry_points:
          show: {{command: "cat {{data.era5}}"}}
        data:
          era5: {{path: data/era5.csv}}
        backends:
          site: {{type: unicore, url: "{site.url}", python: "{sys.executable}", poll_interval: 0s}}
        experiments:
          look: {{entry_point: show, data: [era5]}}
        """,
    )
    on_unicore.commit("data for the site")
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "data.era5: version " in result.stderr
    assert "is not in remote 'storage'; run dvc push" in result.stderr
    assert submissions(site) == [] and on_unicore.runs() == []  # refused before any record or job
    dvc(on_unicore, "push", "-q")
    on_unicore.mantik("apply", "--auto-approve")
    settle(on_unicore)
    (run,) = on_unicore.runs()
    job = site.job_by_url(run.data.tags["mantik.job_id"])
    runner_job = json.loads(next(i["Data"] for i in job.description["Imports"] if i["To"] == "job.json"))
    assert runner_job["environment"]["MANTIK_DATA_ERA5"].startswith(str(tmp_path / "dvc-remote" / "files" / "md5"))
    assert "0,1.0" in (job.workdir / "output.log").read_text()  # read from the remote, not the working tree


def test_logs_come_from_the_jobs_working_directory(on_unicore, site):
    on_unicore.mantik("apply", "--auto-approve")
    settle(on_unicore)
    run = on_unicore.runs()[0]
    result = on_unicore.mantik("logs", run.info.run_id)
    assert "trained" in result.stdout


def test_job_description_from_a_full_mantik_config(on_unicore, site, tmp_path):
    on_unicore.write("compute-backend-config.yaml", FULL_MANTIK_CONFIG.replace(JUWELS, site.url))
    on_unicore.write(
        "mantik.yaml",
        unicore_spec(site.url).replace(f"url: {site.url}", "config: compute-backend-config.yaml"),
    )
    on_unicore.commit("a Mantik config")
    (on_unicore.path / "image.sif").write_bytes(b"not really an image")  # built locally, never committed
    secrets = {"MANTIK_COMPUTE_BUDGET_ACCOUNT": "deepacf", "MLFLOW_TRACKING_TOKEN": "tracking-secret-42"}
    on_unicore.mantik("apply", "--auto-approve", env=secrets)
    url = site.job_urls()[0]
    description = site.job_by_url(url).description
    assert description["Resources"] == {
        "Queue": "booster",
        "Runtime": "12h",
        "Nodes": "2",
        "TotalCPUs": "96",
        "CPUsPerNode": "48",
        "GPUsPerNode": "4",
        "MemoryPerNode": "64G",
        "Reservation": "r1",
        "NodeConstraints": "gpu",
        "QoS": "normal",
    }
    assert description["Project"] == "deepacf"
    assert description["User precommand"] == "echo pre login && echo again"
    assert description["RunUserPrecommandOnLoginNode"] is True
    assert description["User postcommand"] == "echo post login"
    # a Slurm TSI makes CPUsPerNode --ntasks-per-node: SRUN_CPUS_PER_TASK would square it for an srun in the job
    assert "SRUN_CPUS_PER_TASK" not in description["Environment"]
    assert description["Environment"]["MLFLOW_TRACKING_TOKEN"] == "tracking-secret-42"  # at submission only
    assert "mantik-run-" in " ".join(description["Tags"])
    imports = {i["To"]: i for i in description["Imports"]}
    assert imports["work/image.sif"]["From"].startswith(site.url + "/storages/HOME/files/")
    job = json.loads(imports["job.json"]["Data"])
    assert job["environment"]["OMP_NUM_THREADS"] == "8"
    command = job["command"]
    assert command.startswith(
        "module load Stages/2023 CUDA && { echo pre compute\n} && { srun apptainer exec --nv -B /data:/data image.sif sh -c "
    )
    assert command.endswith(" && { echo post compute\n}")
    # the token went to the site with the job, and nowhere else
    assert "tracking-secret-42" not in imports["job.json"]["Data"]
    for run in on_unicore.runs():
        assert "tracking-secret-42" not in json.dumps({**run.data.tags, **run.data.params})
    archive = site.read_storage_file(imports["code.tar.gz"]["From"])
    names = tarfile.open(fileobj=io.BytesIO(archive)).getnames()
    assert "compute-backend-config.yaml" in names and "train.py" in names
    assert "image.sif" not in names and "mantik.yaml" not in names


def test_missing_local_image_is_refused_before_submitting(on_unicore, site):
    on_unicore.write("compute-backend-config.yaml", FULL_MANTIK_CONFIG.replace(JUWELS, site.url))
    on_unicore.write(
        "mantik.yaml",
        unicore_spec(site.url).replace(f"url: {site.url}", "config: compute-backend-config.yaml"),
    )
    on_unicore.commit("a Mantik config without its image")
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "image.sif" in result.stderr and "Traceback" not in result.stderr
    assert submissions(site) == []


def test_unreachable_site_is_one_line(on_unicore):
    on_unicore.write("mantik.yaml", unicore_spec("http://127.0.0.1:9/SITE/rest/core"))
    on_unicore.commit("nobody listens there")
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "cannot reach http://127.0.0.1:9/SITE/rest/core" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_and_help_do_not_import_pyunicore(on_unicore):
    probe = (
        "import sys; from click.testing import CliRunner; from mantik_spec.cli import main; "
        f"r = CliRunner().invoke(main, ['validate', '-C', {str(on_unicore.path)!r}]); "
        "print(r.exit_code, sorted(m for m in sys.modules if m.startswith(('pyunicore', 'httpx'))))"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "0 []"


@pytest.mark.slow  # the whole example through examples/run.sh
def test_unicore_example_runs_against_a_site(site, tmp_path, monkeypatch):
    # the site's compute nodes (this machine) have a Python with mlflow first on PATH
    monkeypatch.setenv("PATH", f"{sys.executable.rsplit('/', 1)[0]}:{os.environ['PATH']}")
    work = tmp_path / "example"
    shutil.copytree(ROOT / "examples" / "unicore", work)  # follows the link to the shared train.py
    config = work / "compute-backend-config.yaml"
    assert JUWELS in config.read_text()
    config.write_text(config.read_text().replace(JUWELS, site.url))
    git(work, "init", "-q", "-b", "main")
    example = Project(work)
    example.env.update(CREDENTIALS)
    example.env["PATH"] = f"{sys.executable.rsplit('/', 1)[0]}:{example.env['PATH']}"
    example.commit("the example, pointed at the test site")
    example.mantik("apply", "--auto-approve")
    settle(example)
    runs = example.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert all("loss" in r.data.metrics for r in runs)  # train.py reported to MLflow from the job


def test_site_outage_while_planning_changes_nothing(on_unicore, site):
    site.queue_seconds = 60
    on_unicore.mantik("apply", "--auto-approve")
    site.fail_next(503, "down for maintenance", count=1000, path_contains="/jobs/")
    planned = on_unicore.mantik("plan", "--json", check=1)  # shown, then an error: the site could not say
    plan = json.loads(planned.stdout)
    assert {e["symbol"] for e in plan["runs"]} == {"…"}  # unknown is never acted upon
    assert all("down for maintenance" in e["reason"] for e in plan["runs"]), plan
    assert plan["errors"] == [
        "backend site could not report on its jobs (the UNICORE site answered 503: down for maintenance "
        "(tried 3 times)); they are left as they were"
    ]
    assert planned.stderr.strip() == "Error: " + plan["errors"][0]
    on_unicore.mantik("apply", "--auto-approve", check=1)
    on_unicore.mantik("status", check=1)
    assert len(submissions(site)) == 2


def test_tls_failure_is_one_line_with_a_hint(on_unicore, site):
    https_to_a_plain_http_port = site.url.replace("http://", "https://")
    on_unicore.write("mantik.yaml", unicore_spec(https_to_a_plain_http_port))
    on_unicore.commit("https where the site speaks http")
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert f"TLS failure talking to {https_to_a_plain_http_port}" in line
    assert "set tls_verify to the site's CA bundle" in line


def test_a_dropped_submission_is_resubmitted_once(on_unicore, site):
    site.drop_next(count=1, path_contains="/jobs")  # the POST never reached the site
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "broke the connection before answering" in result.stderr
    settle(on_unicore)
    assert len(site.job_urls()) == 2  # the lost POST is resubmitted, the other run submitted once
    assert sorted(r.info.status for r in on_unicore.runs() if r.info.status == "FINISHED") == ["FINISHED"] * 2


def test_an_expired_security_session_is_transparent(on_unicore, site):
    site.queue_seconds = 2
    on_unicore.mantik("apply", "--auto-approve")
    site.expire_sessions()  # the next calls carry a session id the site forgot: 432, then a retry
    settle(on_unicore)
    assert sorted(r.info.status for r in on_unicore.runs()) == ["FINISHED", "FINISHED"]


def test_an_endpoint_that_is_not_unicore_is_one_line(on_unicore):
    class MaintenancePage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>down for maintenance</html>")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MaintenancePage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/SITE/rest/core"
        on_unicore.write("mantik.yaml", unicore_spec(url))
        on_unicore.commit("a url that answers HTML")
        result = on_unicore.mantik("apply", "--auto-approve", check=1)
    finally:
        server.shutdown()
    assert "Traceback" not in result.stderr
    assert f"{url} did not answer like a UNICORE REST endpoint" in result.stderr


HOSTILE = ["{{ 7*7 }}", "{% raw %}", '"}, "Executable": "rm -rf ~', "$(touch /tmp/pwned); `id`", "</script>\n\\u0000"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_user_text_in_the_job_description_stays_data(hostile):
    from mantik_spec.templating import packaged, render

    values = {
        "name": f"mantik-{hostile}",
        "executable": "python3",
        "arguments": ["mantik-runner.py", "."],
        "environment": {"X": hostile},
        "imports": [{"From": "inline://mantik", "To": "job.json", "Data": json.dumps({"command": hostile})}],
        "tags": ["mantik", hostile],
        "resources": {"Queue": hostile},
        "project": hostile,
        "login_precommand": hostile,
        "login_postcommand": "",
    }
    description = json.loads(render(packaged("unicore-job.json.j2"), values))
    assert description["Executable"] == "python3"  # nothing a value holds can add or change a key
    assert description["Name"] == f"mantik-{hostile}" and description["Environment"] == {"X": hostile}
    assert json.loads(description["Imports"][0]["Data"]) == {"command": hostile}
    assert description["User precommand"] == hostile and "User postcommand" not in description


# -- the backend against a strict site, in this process -------------------------------------------------------

SHELL_SPECIAL = ['"', "$", "`", "\\", "\n", "'", "!", "$HOME", "$(id)", "`id`", "${X:-y}", "a\\", '\\"', "\\\n"]


@pytest.mark.parametrize("value", [*SHELL_SPECIAL, "".join(SHELL_SPECIAL), 'pa$$"word'])
def test_escaped_values_read_back_unchanged_from_the_servers_environment_line(value):
    from mantik_spec.backends.unicore import shell_double_quoted

    # the line exactly as UNICORE/X writes it (TSIMessages.appendEnvironment), read by bash
    script = f'SECRET="{shell_double_quoted(value)}"; export SECRET\nprintf %s "$SECRET"\n'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout == value


def unicore_backend(site, tmp_path, **config):
    from mantik_spec.backends.unicore import UnicoreBackend
    from mantik_spec.spec.model import UnicoreConfig

    settings = {"type": "unicore", "url": site.url, "python": OFFLINE_PYTHON, "timeout": "5s", "poll_interval": "0s"}
    state = tmp_path / "project" / ".mantik"
    state.mkdir(parents=True, exist_ok=True)
    return UnicoreBackend("site", UnicoreConfig(**settings | config), state)


def job_request(tmp_path, run_id: str, command: str = "true", **fields):
    from mantik_spec.backends.base import JobRequest

    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text("print('trained')\n")
    return JobRequest(
        run_id=run_id,
        run_key=f"key-{run_id}",
        point_id=f"grid[{run_id}]",
        command=command,
        code_dir=code,
        tracking_uri="sqlite:////dev/null",
        experiment_id="0",
        group="grid",
        **fields,
    )


def wait_for_end(site, url: str, timeout: float = 60):
    import time

    deadline = time.monotonic() + timeout
    while not site.job_by_url(url).ended:
        assert time.monotonic() < deadline, f"{url} did not end"
        time.sleep(0.1)
    return site.job_by_url(url)


@pytest.fixture
def credentials(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def test_tracking_secrets_with_every_shell_special_character_reach_the_job_unchanged(
    site, tmp_path, credentials, monkeypatch
):
    secret = "".join(SHELL_SPECIAL)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    backend = unicore_backend(site, tmp_path)
    command = 'printf %s "$MLFLOW_TRACKING_PASSWORD" > secret.txt'
    (url,) = backend.submit([job_request(tmp_path, "0123abcd", command)]).values()
    job = wait_for_end(site, url)
    assert job.status == "SUCCESSFUL", job.status_message
    assert (job.workdir / "work" / "secret.txt").read_text() == secret


def test_total_cpus_and_gpus_run_on_a_standard_site(site, tmp_path, credentials):
    backend = unicore_backend(site, tmp_path, resources={"total_cpus": 2, "gpus_per_node": 1, "memory": "1G"})
    (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
    job = wait_for_end(site, url)
    assert job.description["Resources"] == {"TotalCPUs": "2", "GPUsPerNode": "1", "MemoryPerNode": "1G"}
    assert job.status == "SUCCESSFUL", job.status_message  # CPUs/GPUS: "Resource <CPUs> is not available ..."


def test_gpus_are_named_as_the_sites_resource_database_names_them(tmp_path, credentials):
    partitions = {"booster": {"Nodes": "1-4", "GPUS": "0-4"}}
    with FakeUnicore(tmp_path / "juelich", users={USER: PASSWORD}, partitions=partitions, queue_seconds=0.05) as site:
        backend = unicore_backend(site, tmp_path, resources={"queue": "booster", "gpus_per_node": 4})
        (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
        job = wait_for_end(site, url)
        assert job.description["Resources"] == {"Queue": "booster", "GPUS": "4"}
        assert job.status == "SUCCESSFUL", job.status_message


@pytest.mark.parametrize(("site_runs_them", "outcome"), [("login", "FAILED"), ("batch", "SUCCESSFUL")])
def test_login_precommands_reach_the_job_only_where_the_site_moves_them_into_it(
    tmp_path, credentials, site_runs_them, outcome
):
    """As docs/unicore.md says: on the login node (the default) nothing a precommand sets reaches the batch job;
    a site that allows no interactive user commands writes them into the job script, where it does."""
    with FakeUnicore(tmp_path / "s", users={USER: PASSWORD}, queue_seconds=0.05, login_commands=site_runs_them) as site:
        backend = unicore_backend(site, tmp_path, login_precommand=["export LOADED=yes"])
        (url,) = backend.submit([job_request(tmp_path, "0123abcd", command='test "$LOADED" = yes')]).values()
        assert wait_for_end(site, url).status == outcome


def test_a_login_command_with_a_trailing_comment_does_not_swallow_the_lines_after_it(tmp_path, credentials):
    """Mantik joins the lines with ``&&`` into one command: a ``# comment`` at the end of one line would end the
    command there. The site here writes them into the job script, where their effect can be seen."""
    lines = ["export FIRST=yes  # for torch", "export LOADED=yes", "echo a#b > /dev/null"]
    with FakeUnicore(tmp_path / "s", users={USER: PASSWORD}, queue_seconds=0.05, login_commands="batch") as site:
        backend = unicore_backend(site, tmp_path, login_precommand=lines)
        request = job_request(tmp_path, "0123abcd", command='test "$FIRST$LOADED" = yesyes')
        (url,) = backend.submit([request]).values()
        assert wait_for_end(site, url).status == "SUCCESSFUL"


def test_a_site_that_runs_no_user_executables_fails_the_run_with_its_words(tmp_path, credentials):
    from mantik_spec.vocab import JobState

    with FakeUnicore(tmp_path / "s", users={USER: PASSWORD}, queue_seconds=0.05, login_commands="forbidden") as site:
        backend = unicore_backend(site, tmp_path)
        (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
        wait_for_end(site, url)
        status = backend.poll({url: "0123abcd"})[url]
        assert status.state is JobState.FAILED
        assert "Only Applications may be executed on this site." in status.detail


@pytest.mark.parametrize("memory", ["1G", "1536M", "2G", "3G", "5G", "64G"])
def test_plan_warns_when_the_site_will_not_pass_the_memory_on_as_asked(tmp_path, credentials, memory):
    """The backend's note says what the batch system gets; the fake site (written from UNICORE/X's source on
    its own) delivers exactly that to the job."""
    with FakeUnicore(tmp_path / "mem", users={USER: PASSWORD}, queue_seconds=0.05) as site:
        backend = unicore_backend(site, tmp_path, resources={"memory": memory})
        (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
        job = wait_for_end(site, url)
        assert job.status == "SUCCESSFUL", job.status_message
        got = job.batch.get("SLURM_MEM_PER_NODE")
        notes = backend.notes()
        if memory in ("1G", "1536M"):
            assert notes == [] and got == str(int(memory[:-1]) * (1024 if memory.endswith("G") else 1))
        elif got is None:
            assert notes == [
                f"resources.memory {memory}: UNICORE/X passes memory to the batch system as a 32-bit byte count, "
                "so Slurm gets no memory request (the partition's default); leave memory out, or ask the site how "
                "to request more than 2 GiB"
            ]
        else:
            assert len(notes) == 1 and f"Slurm gets --mem={got}M;" in notes[0]


@pytest.mark.parametrize(
    ("resources", "refusal"),
    [
        ({"queue": "booster"}, "resources.queue: the site has no queue booster (it offers: batch, gpus)"),
        ({"gpus_per_node": 1}, "resources.gpus_per_node: the site defines no GPUsPerNode for any of its queues"),
        (
            {"queue": "batch", "total_cpus": 4},
            "the site defines no TotalCPUs for queue batch (it offers: Nodes, Runtime)",
        ),
        ({"queue": "gpus", "nodes": 3}, "resources.nodes: 3 is outside what the site allows for queue gpus (1-2)"),
        ({"runtime": "2d"}, "resources.runtime: 2d is outside what the site allows"),
    ],
)
def test_what_the_site_does_not_offer_is_refused_before_any_job_exists(tmp_path, credentials, resources, refusal):
    from mantik_spec.backends.base import BackendError

    partitions = {"batch": {"Nodes": "1-4", "Runtime": "60-86400"}, "gpus": {"Nodes": "1-2", "Runtime": "60-3600"}}
    with FakeUnicore(tmp_path / "small", users={USER: PASSWORD}, partitions=partitions) as site:
        backend = unicore_backend(site, tmp_path, resources=resources)
        assert any(refusal in problem for problem in backend.preflight()), backend.preflight()
        with pytest.raises(BackendError, match=re.escape(refusal)):
            backend.submit([job_request(tmp_path, "0123abcd")])
        assert site.job_urls() == []


def test_plan_names_what_the_site_does_not_offer_and_apply_starts_nothing(on_unicore, site):
    site.partitions = {"batch": {"Nodes": "1-4"}}
    on_unicore.write("mantik.yaml", unicore_spec(site.url, extra="    resources: {gpus_per_node: 1}"))
    on_unicore.commit("a GPU the site does not have")
    plan = json.loads(on_unicore.mantik("plan", "--json", check=1).stdout)
    assert plan["errors"] == [
        "backend site: resources.gpus_per_node: the site defines no GPUsPerNode for any of its queues (it offers: Nodes)"
    ]
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "defines no GPUsPerNode" in result.stderr and "Traceback" not in result.stderr
    assert submissions(site) == []


@pytest.mark.parametrize(
    ("storages", "configured", "outcome"),
    [
        (["HOME", "SCRATCH"], None, "HOME"),
        (["{user}-Home", "SCRATCH"], None, "alice-Home"),
        (["SCRATCH", "PROJECT"], "PROJECT", "PROJECT"),
        (["SCRATCH", "PROJECT"], None, "cannot tell which storage to stage files in (the site has: SCRATCH, PROJECT)"),
        (["{user}-Home"], "HOME", "storage HOME is not a storage of the site (it has: alice-Home)"),
    ],
)
def test_the_staging_storage_is_one_the_site_has(tmp_path, credentials, storages, configured, outcome):
    from mantik_spec.backends.base import BackendError

    with FakeUnicore(tmp_path / "site", users={USER: PASSWORD}, storages=storages, queue_seconds=0.05) as site:
        backend = unicore_backend(site, tmp_path, **({"storage": configured} if configured else {}))
        if " " in outcome:
            with pytest.raises(BackendError, match=re.escape(outcome)):
                backend.submit([job_request(tmp_path, "0123abcd")])
            assert site.job_urls() == []
            return
        (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
        job = wait_for_end(site, url)
        assert job.status == "SUCCESSFUL", job.status_message
        assert job.description["Imports"][0]["From"].startswith(f"{site.url}/storages/{outcome}/files/")


def test_jobs_are_kept_for_their_lifetime_and_an_expired_job_says_why(site, tmp_path, credentials):
    from datetime import UTC, datetime, timedelta

    from mantik_spec.vocab import JobState

    backend = unicore_backend(site, tmp_path)
    (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
    # the site's own default is one day; a run that cannot report is closed from the job, maybe days later
    assert site.job_by_url(url).termination > datetime.now(UTC) + timedelta(days=13)
    wait_for_end(site, url)
    site.expire(url)
    (status,) = backend.poll({url: "0123abcd"}).values()
    assert status.state is JobState.LOST
    assert "deletes a job and its directory at its termination time" in status.detail


def test_a_site_that_caps_the_lifetime_still_gets_the_job(tmp_path, credentials):
    with FakeUnicore(tmp_path / "capped", users={USER: PASSWORD}, max_lifetime=3600, queue_seconds=0.05) as site:
        backend = unicore_backend(site, tmp_path)
        (url,) = backend.submit([job_request(tmp_path, "0123abcd")]).values()
        assert wait_for_end(site, url).status == "SUCCESSFUL"


def test_a_local_image_is_hashed_once_per_content(site, tmp_path, credentials, monkeypatch):
    import hashlib

    image = tmp_path / "image.sif"
    image.write_bytes(os.urandom(1 << 20))
    hashed = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data=b""):
            self.inner = real(data)
            hashed.append(len(data))

        def update(self, data):
            hashed.append(len(data))
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    site.queue_seconds = 60
    requests = [job_request(tmp_path, f"run{i:04d}", inputs={"image.sif": image}) for i in range(5)]
    monkeypatch.setattr(hashlib, "sha256", Counting)
    urls = unicore_backend(site, tmp_path).submit(requests)
    assert sum(hashed) < 2 * image.stat().st_size  # once, not once per run
    imports = {i["To"]: i["From"] for i in site.job_by_url(urls["run0000"]).description["Imports"]}
    assert site.read_storage_file(imports["work/image.sif"]) == image.read_bytes()  # streamed up whole
    hashed.clear()
    unicore_backend(site, tmp_path).submit([job_request(tmp_path, "later", inputs={"image.sif": image})])
    assert sum(hashed) < image.stat().st_size  # the next apply: from the digest cache


def test_committed_files_named_like_the_jobs_own_files_do_not_collide(site, tmp_path, credentials):
    code = tmp_path / "code"
    code.mkdir()
    for name in ("job.json", "mantik-runner.py", "code.tar.gz", "output.log", "stdout"):
        (code / name).write_text(f"the user's {name}\n")
    backend = unicore_backend(site, tmp_path)
    command = "cat job.json mantik-runner.py code.tar.gz output.log stdout"
    (url,) = backend.submit([job_request(tmp_path, "0123abcd", command)]).values()
    job = wait_for_end(site, url)
    assert job.status == "SUCCESSFUL", job.status_message
    output = (job.workdir / "output.log").read_text()
    for name in ("job.json", "mantik-runner.py", "code.tar.gz", "output.log", "stdout"):
        assert f"the user's {name}" in output


def test_a_large_committed_file_reaches_the_site_streamed_not_held_in_memory(on_unicore, site):
    """The code archive is written to a temporary file and uploaded from it: apply needs about the memory
    plan needs, whatever the size of the repository."""
    on_unicore.write("mantik.yaml", unicore_spec(site.url).replace("code: {paths: [train.py]}\n", ""))
    size = 64 << 20
    with open(on_unicore.path / "weights.bin", "wb") as handle:  # incompressible, like real weights
        for _ in range(size >> 20):
            handle.write(os.urandom(1 << 20))
    on_unicore.commit("weights")
    planning = peak_rss_kib(on_unicore, "plan")
    applying = peak_rss_kib(on_unicore, "apply", "--auto-approve")
    [archive] = [p for p in site.root.rglob("code-*") if p.is_file()]
    assert archive.stat().st_size > size  # the whole tree went, once
    extra = (applying - planning) * 1024
    assert extra < size // 4, f"apply needed {extra >> 20} MiB more than plan to send a {size >> 20} MiB file"


def test_a_run_record_naming_a_job_elsewhere_is_never_sent_the_sites_credentials(on_unicore, site):
    """A job URL comes from a run record, which anyone who can write to the tracking store can write: plan,
    logs and cancel ask only URLs of this site's job list, so the password never reaches another server, and
    no job elsewhere is aborted."""
    site.queue_seconds = 60
    on_unicore.mantik("apply", "--auto-approve")
    listener = Listener()
    try:
        client = on_unicore.client()
        runs = on_unicore.runs()
        jobs_url = site.job_urls()[0].rsplit("/", 1)[0]
        forged = {
            runs[0].info.run_id: f"http://127.0.0.1:{listener.port}/SITE/rest/core/jobs/x",
            runs[1].info.run_id: f"{jobs_url}/../../../../{listener.port}",
        }
        for run_id, url in forged.items():
            client.set_tag(run_id, "mantik.job_id", url)
        planned = on_unicore.mantik("plan", check=1)
        assert planned.stderr.count("not asked") >= 1, planned.stderr
        on_unicore.mantik("logs", runs[0].info.run_id, check=1)
        cancelled = on_unicore.mantik("cancel", "sweep", check=1)
        assert "is not a mantik job of" in cancelled.stderr and "left alone" in cancelled.stderr
        assert listener.received == []
        assert not [r for r in site.requests if r[1].endswith("/actions/abort")]
    finally:
        listener.close()


def test_a_mantik_configs_multi_line_login_command_reaches_the_job_description(site, tmp_path, credentials):
    """A folded PreRunCommandOnLoginNode is one command (its final line break none), as Mantik sent it."""
    from mantik_spec.spec.load import load_spec

    project = tmp_path / "p"
    project.mkdir()
    (project / "compute-backend-config.yaml").write_text(MAELSTROM_CONFIG.replace("Queue: booster", "Queue: batch"))
    (project / "mantik.yaml").write_text(
        "project: demo\nbackends:\n  juwels: {type: unicore, config: compute-backend-config.yaml}\n"
    )
    config = load_spec(project).spec.backends["juwels"]
    backend = unicore_backend(site, tmp_path, login_precommand=config.login_precommand)
    description = backend.job_description(job_request(tmp_path, "0123abcd"))
    assert description["User precommand"] == "mkdir -p $SCRATCH/maelstrom && cp -r data $SCRATCH/maelstrom"
    assert description["RunUserPrecommandOnLoginNode"] in (True, "true")

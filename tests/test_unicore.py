"""The UNICORE backend, end to end: the real `mantik` command and the real pyunicore client against
a fake UNICORE site on 127.0.0.1 that runs the jobs as local processes (tests/fake_unicore.py)."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading

import pytest

from .conftest import BASIC_SPEC, ROOT, Project, git
from .fake_unicore import FakeUnicore
from .test_mantik_formats import FULL_MANTIK_CONFIG, JUWELS

USER, PASSWORD = "alice", "wonderland"
CREDENTIALS = {"MANTIK_UNICORE_USERNAME": USER, "MANTIK_UNICORE_PASSWORD": PASSWORD}
# the runner's Python without site-packages: a compute node that has no mlflow, as if it were offline
OFFLINE_PYTHON = f"{sys.executable} -S"


def unicore_spec(url: str, python: str = sys.executable, extra: str = "") -> str:
    """The shared test spec (conftest.BASIC_SPEC) on one UNICORE backend; ``extra``: more backend keys."""
    backend = f"""  site:
    type: unicore
    url: {url}
    python: {python!r}
    timeout: 5s
    poll_interval: 0s
{extra}"""
    local = "  local: {type: local, max_parallel: 4}\n"
    assert local in BASIC_SPEC
    return BASIC_SPEC.replace(local, backend.rstrip("\n") + "\n")


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


def settle(project, timeout: float = 90) -> None:
    """Apply until every run has ended (an apply also closes runs whose runner could not)."""

    def settled():
        plan = project.plan_json()
        if all(entry["symbol"] in ("=", "x") for entry in plan["runs"]):
            return True
        if plan["has_changes"]:
            project.mantik("apply", "--auto-approve")
        return False

    project.wait_until(settled, timeout=timeout, message="all runs settled")


def test_grid_runs_to_finished_and_a_second_apply_submits_nothing(on_unicore, site):
    on_unicore.mantik("apply", "--auto-approve")
    assert len(submissions(site)) == 2
    settle(on_unicore)
    runs = on_unicore.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    for run in runs:
        job_url = run.data.tags["mantik.job_id"]
        assert job_url.startswith(site.url + "/jobs/")
        assert site.job_by_url(job_url).status == "SUCCESSFUL"
        assert f"mantik-run-{run.info.run_id}" in site.job_by_url(job_url).tags
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


def test_submission_timeout_is_adopted_not_submitted_twice(on_unicore, site):
    site.hang_next(8, count=1, path_contains="/jobs")  # longer than the backend's 5 s timeout
    result = on_unicore.mantik("apply", "--auto-approve", check=1)
    assert "did not answer within 5 s" in result.stderr
    assert "may have been submitted" in result.stderr
    on_unicore.wait_until(lambda: len(site.job_urls()) >= 1, timeout=20, message="the hung POST to land")
    settle(on_unicore)
    finished = [r for r in on_unicore.runs() if r.info.status == "FINISHED"]
    assert len(finished) == 2
    assert len(site.job_urls()) == 2  # one job per run key: the hung submission was adopted


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
    from .test_versions import dvc

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
        "CPUs": "96",
        "CPUsPerNode": "48",
        "GPUS": "4",
        "Memory": "64G",
        "Reservation": "r1",
        "NodeConstraints": "gpu",
        "QoS": "normal",
    }
    assert description["Project"] == "deepacf"
    assert description["User precommand"] == "echo pre login && echo again"
    assert description["RunUserPrecommandOnLoginNode"] is True
    assert description["User postcommand"] == "echo post login"
    assert description["Environment"]["SRUN_CPUS_PER_TASK"] == "48"
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

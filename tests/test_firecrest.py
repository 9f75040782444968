"""The FirecREST backend, end to end: the real `mantik` command and the real pyfirecrest client against a
FirecREST v2 double on 127.0.0.1 (tests/fake_firecrest.py) that runs the jobs on the local test Slurm."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from .conftest import ROOT, Project, git
from .fake_firecrest import FakeFirecrest
from .support.project import settle
from .support.slurm import (
    slurm,  # noqa: F401  (the autouse fixture: CI fails without Slurm, elsewhere skips)
    squeue_state,
)
from .support.specs import VENV_BIN, firecrest_spec

CREDENTIALS = {"MANTIK_FIRECREST_CLIENT_ID": "mantik", "MANTIK_FIRECREST_CLIENT_SECRET": "s3cret"}


@pytest.fixture
def site():
    with FakeFirecrest() as fake:
        yield fake


@pytest.fixture
def on_firecrest(project, site, tmp_path):
    project.env.update(CREDENTIALS)
    project.env["PATH"] = f"{VENV_BIN}:{project.env['PATH']}"
    project.workdir = tmp_path / "cluster"
    project.workdir.mkdir()
    project.write("mantik.yaml", firecrest_spec(site, project.workdir))
    project.commit("run on firecrest")
    return project


def slow(project, site) -> None:
    spec = firecrest_spec(site, project.workdir).replace("default: 0}", "default: 60}")
    project.write("mantik.yaml", spec)
    project.commit("slow")


def test_grid_runs_as_one_array_to_finished_with_code_staged_once(on_firecrest, site):
    on_firecrest.mantik("apply", "--auto-approve")
    assert site.count("POST", "submit") == 1  # three points, one job array
    settle(on_firecrest)
    runs = on_firecrest.runs()
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    codes = list((on_firecrest.workdir / "code").glob("*.tar.gz"))
    assert len(codes) == 1
    # a new grid point with the same code: a second array, no second upload of the code
    uploads = site.count("POST", "extract")
    on_firecrest.write("mantik.yaml", firecrest_spec(site, on_firecrest.workdir, lrs="[0.1, 0.2, 0.3, 0.4]"))
    on_firecrest.commit("one more point")
    on_firecrest.mantik("apply", "--auto-approve")
    assert site.count("POST", "extract") == uploads + 1  # the batch's files only
    assert len(list((on_firecrest.workdir / "code").glob("*.tar.gz"))) == 1
    settle(on_firecrest)
    assert {r.info.status for r in on_firecrest.runs()} == {"FINISHED"}
    # the OIDC client's secret is nowhere: not in the project's state, MLflow, nor on the cluster
    for root in (on_firecrest.path, on_firecrest.workdir):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert b"s3cret" not in path.read_bytes(), path
    # logs: the run's output file, read through the API
    run = on_firecrest.runs()[0]
    assert "trained" in on_firecrest.mantik("logs", run.info.run_id).stdout


def test_status_lists_jobs_once_per_poll(on_firecrest, site):
    slow(on_firecrest, site)  # runs still live when status asks
    on_firecrest.mantik("apply", "--auto-approve")
    before = site.count("GET", "jobs")
    on_firecrest.mantik("status")
    assert site.count("GET", "jobs") - before == 1, str(site.requests)


def test_lost_submission_answer_is_adopted_not_resubmitted(on_firecrest, site):
    site.hang[("POST", "submit")] = 1  # sbatch runs, the answer comes after the client's timeout
    on_firecrest.mantik("apply", "--auto-approve", check=None)
    assert len(site.submitted) == 1
    settle(on_firecrest)
    assert len(site.submitted) == 1
    runs = on_firecrest.runs()
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}


def test_gateway_error_after_the_job_was_queued_adopts_it(on_firecrest, site):
    site.fail_after[("POST", "submit")] = [502]  # sbatch ran behind the proxy that answered 502
    on_firecrest.mantik("apply", "--auto-approve")  # found by its batch directory before anything was recorded
    assert len(site.submitted) == 1
    names = subprocess.run(["squeue", "-h", "-t", "all", "-j", site.submitted[0], "-o", "%j"], capture_output=True)
    assert set(names.stdout.decode().split()) == {"mantik-sweep"}  # what the user reads in squeue
    settle(on_firecrest)
    assert len(site.submitted) == 1
    assert {r.info.status for r in on_firecrest.runs()} == {"FINISHED"}


def test_server_error_on_submit_then_recovers(on_firecrest, site):
    site.fail[("POST", "submit")] = [500]
    result = on_firecrest.mantik("apply", "--auto-approve", check=None)
    assert result.returncode != 0 and "500" in result.stderr + result.stdout
    assert site.submitted == []
    settle(on_firecrest)
    assert len(site.submitted) == 1


def test_expired_token_is_renewed(on_firecrest, site):
    slow(on_firecrest, site)
    on_firecrest.mantik("apply", "--auto-approve")
    site.expire_tokens()
    tokens = site.count("POST", "token")
    on_firecrest.mantik("status")
    assert site.count("POST", "token") == tokens + 1


def test_wrong_client_secret_is_one_line(on_firecrest, site):
    result = on_firecrest.mantik("apply", "--auto-approve", check=None, env={"MANTIK_FIRECREST_CLIENT_SECRET": "x"})
    assert result.returncode != 0
    assert "MANTIK_FIRECREST_CLIENT_SECRET" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_cancel_stops_the_array_and_logs_read_the_output_file(on_firecrest, site):
    slow(on_firecrest, site)
    on_firecrest.mantik("apply", "--auto-approve")
    job = site.submitted[0]
    result = on_firecrest.mantik("cancel", "sweep")
    assert "Cancelled 3 run(s)" in result.stdout
    assert site.count("DELETE", "cancel") == 1  # one array, one call
    on_firecrest.wait_until(
        lambda: not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip(),
        timeout=60,
        message="the array cancelled",
    )


def test_cancelling_part_of_an_array_is_refused_and_leaves_it_running(on_firecrest, site):
    slow(on_firecrest, site)
    on_firecrest.mantik("apply", "--auto-approve")
    one = on_firecrest.runs()[0].info.run_id
    result = on_firecrest.mantik("cancel", one, check=1)
    assert "FirecREST cancels whole jobs" in result.stderr
    assert site.count("DELETE", "cancel") == 0
    assert len(squeue_ids(site.submitted[0])) == 3


def squeue_ids(job: str) -> list[str]:
    listing = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True).stdout
    return listing.split()


def test_job_gone_reads_as_lost(on_firecrest, site):
    slow(on_firecrest, site)
    site.hold = True
    on_firecrest.mantik("apply", "--auto-approve")
    job = site.submitted[0]
    subprocess.run(["scancel", job], check=True)
    site.forget(job)
    statuses = {entry["state"] for entry in on_firecrest.status_json()}
    assert statuses and statuses <= {"lost"}, statuses


def test_server_errors_on_reads_are_retried(on_firecrest, site):
    slow(on_firecrest, site)
    on_firecrest.mantik("apply", "--auto-approve")
    site.fail[("GET", "jobs")] = [503, 500]
    on_firecrest.mantik("status")
    assert site.count("GET", "jobs") >= 3


def test_unreachable_api_is_unknown_never_acted_upon(on_firecrest, site):
    slow(on_firecrest, site)
    on_firecrest.mantik("apply", "--auto-approve")
    site.fail[("GET", "jobs")] = [500] * 10
    result = on_firecrest.mantik("plan", check=None)
    assert result.returncode == 1
    assert len(site.submitted) == 1


def test_firecrest_example_runs_against_the_double(site, tmp_path, monkeypatch):
    # the double's jobs inherit its environment: compute nodes whose python3 has mlflow
    monkeypatch.setenv("PATH", f"{VENV_BIN}:{os.environ['PATH']}")
    example = tmp_path / "example"
    shutil.copytree(ROOT / "examples" / "firecrest", example)
    config = example / "compute-backend-config.yaml"
    text = config.read_text()
    for real, ours in (
        ("https://api.cscs.ch/ml/firecrest/v2", site.url),
        ("https://auth.cscs.ch/auth/realms/firecrest-clients/protocol/openid-connect/token", site.token_url),
        ("Machine: clariden", f"Machine: {site.system}"),
        ("Queue: normal", "Queue: debug"),
    ):
        assert real in text
        text = text.replace(real, ours)
    config.write_text(text)
    spec = example / "mantik.yaml"
    spec.write_text(spec.read_text().replace("/capstor/scratch/cscs/YOU/mantik", str(tmp_path / "cluster")))
    (tmp_path / "cluster").mkdir()
    git(example, "init", "-q", "-b", "main")
    project = Project(example)
    project.env.update(CREDENTIALS)
    project.env["PATH"] = f"{VENV_BIN}:{project.env['PATH']}"
    project.commit("the example, pointed at the double")
    project.mantik("validate")
    project.mantik("apply", "--auto-approve")
    assert site.count("POST", "submit") == 1  # four runs, one array
    settle(project)
    runs = project.runs()
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert all("loss" in r.data.metrics for r in runs)  # train.py reported to MLflow from the job


def test_large_code_goes_through_the_transfer_mechanism(on_firecrest, site):
    blob = os.urandom(1536 * 1024)  # incompressible: the archive is over pyfirecrest's 1 MiB direct limit
    (on_firecrest.path / "blob.bin").write_bytes(blob)
    spec = firecrest_spec(site, on_firecrest.workdir).replace("paths: [train.py]", "paths: [train.py, blob.bin]")
    on_firecrest.write("mantik.yaml", spec)
    on_firecrest.commit("a large file in the code")
    on_firecrest.mantik("apply", "--auto-approve")
    assert site.count("POST", "transfer-upload") == 1  # the code archive; the small files went directly
    assert site.count("PUT", "s3-part") == 2
    staged = list((on_firecrest.workdir / "code").glob("*/blob.bin"))
    assert len(staged) == 1 and staged[0].read_bytes() == blob
    settle(on_firecrest)
    assert {r.info.status for r in on_firecrest.runs()} == {"FINISHED"}


def client_of(site):
    from firecrest import ClientCredentialsAuth
    from firecrest.v2 import Firecrest

    return Firecrest(site.url, authorization=ClientCredentialsAuth("mantik", "s3cret", site.token_url))


def test_the_doubles_listing_and_downloads_answer_pyfirecrest_as_the_real_server_does(site, tmp_path):
    from firecrest import FirecrestException

    root = tmp_path / "cluster"
    (root / "sub dir").mkdir(parents=True)
    every_byte = bytes(range(256)) * 4  # no text: ops/view would mangle it
    (root / "sub dir" / "db.bin").write_bytes(every_byte)
    (root / ".hidden").write_text("h")
    (root / "link").symlink_to("sub dir/db.bin")
    client = client_of(site)

    listing = {e["name"]: e for e in client.list_files(site.system, str(root))}
    assert set(listing) == {"sub dir", "link"}  # hidden files only when asked
    fields = {"name", "type", "linkTarget", "user", "group", "permissions", "lastModified", "size"}  # File, camelCase
    assert set(listing["link"]) == fields
    link = listing["link"]
    assert (listing["sub dir"]["type"], link["type"], link["linkTarget"]) == ("d", "l", "sub dir/db.bin")
    assert ".hidden" in {e["name"] for e in client.list_files(site.system, str(root), show_hidden=True)}
    below = {e["name"]: e for e in client.list_files(site.system, str(root), recursive=True)}
    assert below["sub dir/db.bin"]["type"] == "-" and below["sub dir/db.bin"]["size"] == "1024"  # a string
    with pytest.raises(FirecrestException) as missing:
        client.list_files(site.system, str(root / "none"))
    assert missing.value.responses[-1].status_code == 404

    client.download(site.system, str(root / "sub dir" / "db.bin"), tmp_path / "small")
    assert (tmp_path / "small").read_bytes() == every_byte
    assert (site.count("GET", "download"), site.count("POST", "transfer-download")) == (1, 0)

    large = os.urandom(1536 * 1024)  # over pyfirecrest's 1 MiB: a transfer job stages it in the object store
    (root / "large.bin").write_bytes(large)
    client.download(site.system, str(root / "large.bin"), tmp_path / "large")
    assert (tmp_path / "large").read_bytes() == large
    assert (site.count("POST", "transfer-download"), site.count("GET", "s3-object")) == (1, 1)

    with pytest.raises(FileNotFoundError):
        client.download(site.system, str(root / "none"), tmp_path / "none")
    assert site.count("POST", "transfer-download") == 1  # the stat said so: no job


def test_ops_download_refuses_a_file_over_the_size_limit_and_an_unstaged_object_is_404(site, tmp_path):
    import httpx

    from .fake_firecrest import MAX_OPS_FILE_SIZE

    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_OPS_FILE_SIZE + 1)
    token = httpx.post(
        site.token_url, data={"grant_type": "client_credentials", "client_id": "mantik", "client_secret": "s3cret"}
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{site.url}/filesystem/{site.system}/ops/download", params={"path": str(huge)}, headers=headers)
    assert (answer.status_code, answer.json()["message"]) == (413, "File to download is too large.")
    site.remove_before_transfer = True  # its job finds no file and exits 34: the object never comes
    staged = httpx.post(
        f"{site.url}/filesystem/{site.system}/transfer/download",
        json={"sourcePath": str(huge), "transferDirectives": {"transferMethod": "s3"}},
        headers=headers,
    )
    assert staged.status_code == 201
    url = staged.json()["transferDirectives"]["downloadUrl"]
    log = staged.json()["transferJob"]["logs"]["errorLog"]
    wait_until(lambda: os.path.exists(log) and "file_not_found" in open(log).read(), "the transfer job failed")
    assert httpx.get(url).status_code == 404


def wait_until(condition, message: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def backend_on(site, workdir):
    from mantik_spec.backends.firecrest import FirecrestBackend
    from mantik_spec.spec.model import FirecrestConfig

    config = FirecrestConfig(
        type="firecrest", url=site.url, token_url=site.token_url, machine=site.system, workdir=str(workdir)
    )
    return FirecrestBackend("alps", config, workdir / "state")


def test_a_journal_is_read_exact_through_the_api_and_a_failed_transfer_is_one_line(site, tmp_path, monkeypatch):
    from mantik_spec import runner
    from mantik_spec.backends.base import BackendError

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    backend = backend_on(site, tmp_path)
    journal_dir = tmp_path / "runs" / "abc123" / runner.JOURNAL_DIR
    (journal_dir / "artifacts" / "model").mkdir(parents=True)
    database = b"SQLite format 3\0" + bytes(range(256)) * 8
    (journal_dir / runner.JOURNAL_DB).write_bytes(database)
    (journal_dir / "artifacts" / "model" / "w.bin").write_bytes(b"\xff\xfe")
    (journal_dir / "artifacts" / "large.bin").write_bytes(b"\x80" * (1024 * 1024 + 1))

    journal = backend.journal("abc123", None)
    assert journal is not None
    before = len(site.requests)
    assert journal.read_bytes(runner.JOURNAL_DB) == database
    assert journal.read_bytes(runner.JOURNAL_DB + "-journal") is None
    # under 1 MiB a file is a stat and a download; a missing one, the stat
    made = [r for r in site.requests[before:] if r != ("POST", "token")]
    assert made == [("GET", "stat"), ("GET", "download"), ("GET", "stat")]
    assert journal.files("artifacts") == [("large.bin", 1024 * 1024 + 1), ("model/w.bin", 2)]
    assert journal.files("none") == []
    assert backend.journal("../abc123", None) is None  # never a path outside the work directory
    (journal_dir.parent / runner.OUTPUT_FILE).write_text("epoch 1\nepoch 2\n")
    downloads = site.count("GET", "download")
    assert backend.read_log("abc123", None, offset=8) == b"epoch 2\n"  # polled: one ops/view, never a download
    assert site.count("GET", "download") == downloads

    # a database from 1 MiB comes by transfer job, once while it is unchanged (the site's SHA-256 says so)
    grown = journal_dir / runner.JOURNAL_DB
    grown.write_bytes(database + bytes(1024 * 1024))
    assert journal.read_together([runner.JOURNAL_DB]) == [grown.read_bytes()]
    assert journal.read_together([runner.JOURNAL_DB]) == [grown.read_bytes()]
    assert (site.count("POST", "transfer-download"), site.count("GET", "checksum")) == (1, 1)
    grown.write_bytes(database + b"\x01" * (1024 * 1024))  # same size, other content
    assert journal.read_together([runner.JOURNAL_DB]) == [grown.read_bytes()]
    assert site.count("POST", "transfer-download") == 2
    # an artifact is read once a sync: never kept in memory (each read of it a transfer job)
    large = journal_dir / "artifacts" / "large.bin"
    assert journal.read_bytes("artifacts/large.bin") == large.read_bytes()
    assert journal.read_bytes("artifacts/large.bin") == large.read_bytes()
    assert (site.count("POST", "transfer-download"), site.count("GET", "checksum")) == (4, 2)

    site.fail[("GET", "s3-object")] = [403]  # the staged object refused (an expired presigned URL)
    large.write_bytes(b"\x82" * (1024 * 1024 + 1))
    with pytest.raises(BackendError, match="^the site's object store answered 403 for a staged file$"):
        journal.read_bytes("artifacts/large.bin")

    site.remove_before_transfer = True  # the transfer job finds no file: pyfirecrest says it failed
    with pytest.raises(BackendError) as failed:
        journal.read_bytes("artifacts/large.bin")
    message = str(failed.value)
    assert message.startswith("the FirecREST transfer job ") and "\n" not in message and "job.err" in message


def journal_with_large_file(site, tmp_path, monkeypatch):
    """A backend on the double and a run's journal holding a file over 1 MiB (read by transfer job)."""
    from mantik_spec import runner

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    backend = backend_on(site, tmp_path)
    journal_dir = tmp_path / "runs" / "abc123" / runner.JOURNAL_DIR
    (journal_dir / "artifacts").mkdir(parents=True)
    (journal_dir / "artifacts" / "large.bin").write_bytes(b"\x80" * (1024 * 1024 + 1))
    return backend, backend.journal("abc123", None)


def read_within(journal, name: str, seconds: float):
    """``journal.read_bytes(name)`` in a thread: its answer or exception, failing the test if it takes longer."""
    import threading

    outcome: list = []

    def read():
        try:
            outcome.append(journal.read_bytes(name))
        except BaseException as exc:  # noqa: BLE001  (the test inspects what the read raised)
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the read still waited after {seconds} s"
    return outcome[0]


def test_a_transfer_job_that_never_starts_is_one_line_within_the_wait_and_is_cancelled(site, tmp_path, monkeypatch):
    from mantik_spec.backends.base import BackendError

    backend, journal = journal_with_large_file(site, tmp_path, monkeypatch)
    backend.files.transfer_wait = 3.0
    site.hold_transfers = True  # queued for good, as behind a busy transfer partition
    started = time.monotonic()
    failure = read_within(journal, "artifacts/large.bin", 60)
    assert isinstance(failure, BackendError), failure
    assert time.monotonic() - started < 30
    message = str(failure)
    job = site.transfer_jobs[0]
    assert message == (
        f"the FirecREST transfer job {job} on {site.system} was still queued or running after 3 s and was cancelled: "
        "read again on the next pass"
    )
    assert site.count("POST", "transfer-download") == 1 and site.count("DELETE", "cancel") == 1
    wait_until(lambda: squeue_state(job) in ("", "CANCELLED"), "the held transfer job cancelled")
    site.hold_transfers = False  # the next pass reads it
    assert read_within(journal, "artifacts/large.bin", 120) == b"\x80" * (1024 * 1024 + 1)


def test_a_failed_poll_or_answer_of_a_transfer_job_is_one_line_and_never_a_second_job(site, tmp_path, monkeypatch):
    from mantik_spec.backends.base import BackendError

    backend, journal = journal_with_large_file(site, tmp_path, monkeypatch)
    site.fail[("GET", "job")] = [503]  # the first poll of the transfer job
    failure = read_within(journal, "artifacts/large.bin", 60)
    assert isinstance(failure, BackendError), repr(failure)
    job = site.transfer_jobs[0]
    assert str(failure) == (
        f"FirecREST did not answer the first poll of the FirecREST transfer job {job} on {site.system}: "
        "read again on the next pass"
    )
    assert len(site.transfer_jobs) == 1

    site.fail_after[("POST", "transfer-download")] = [502]  # the job was queued; a proxy answered 502
    failure = read_within(journal, "artifacts/large.bin", 60)
    assert isinstance(failure, BackendError) and "502" in str(failure) and "\n" not in str(failure), repr(failure)
    assert len(site.transfer_jobs) == 2  # one more job, not one per retry
    assert read_within(journal, "artifacts/large.bin", 120) == b"\x80" * (1024 * 1024 + 1)  # the next pass


def test_a_failed_upload_part_is_one_line_naming_it_without_the_presigned_urls(site, tmp_path, monkeypatch):
    from mantik_spec.backends.base import BackendError

    backend, _ = journal_with_large_file(site, tmp_path, monkeypatch)
    site.fail[("PUT", "s3-part")] = [403]  # S3's answer to an expired presigned URL
    with pytest.raises(BackendError) as failed:
        backend.files.upload(os.urandom(1536 * 1024), str(tmp_path), "code.tar.gz")  # staging code over 1 MiB
    message = str(failed.value)
    job = site.transfer_jobs[0]
    assert message == (
        f"the upload through the object store of the FirecREST transfer job {job} on {site.system} failed: "
        "Failed to upload part 1: 403: AccessDenied: Request has expired"
    )
    assert site.count("POST", "transfer-upload") == 1  # not repeated: each one queues a transfer job
    for secret in ("X-Amz", "?", "://", "/s3/"):
        assert secret not in message

    site.drop[("PUT", "s3-part")] = 1  # the object store drops the connection: the transfer job is queued already
    with pytest.raises(BackendError):
        backend.files.upload(os.urandom(1536 * 1024), str(tmp_path), "code.tar.gz")
    assert site.count("POST", "transfer-upload") == 2  # one more, not one per retry


def test_a_journal_file_whose_name_holds_a_quote_is_one_line_naming_it(site, tmp_path, monkeypatch):
    from firecrest import FirecrestException

    from mantik_spec.backends.base import BackendError

    backend, journal = journal_with_large_file(site, tmp_path, monkeypatch)
    artifacts = tmp_path / "runs" / "abc123" / "journal" / "artifacts"
    (artifacts / "it's.txt").write_bytes(b"q")
    (artifacts / "a b.txt").write_bytes(b"b")
    # the server puts the path in '...' in a shell command: the quote breaks it, a blank does not
    with pytest.raises(FirecrestException) as broken:
        client_of(site).download(site.system, str(artifacts / "it's.txt"), tmp_path / "out")
    assert broken.value.responses[-1].status_code == 500
    assert journal.read_bytes("artifacts/a b.txt") == b"b"
    site.command_timeout = 1  # a command `timeout` stops answers 408: here sha256sum reading a FIFO never ends
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(FirecrestException) as slow:
        client_of(site).checksum(site.system, str(tmp_path / "fifo"))
    assert slow.value.responses[-1].status_code == 408

    assert ("it's.txt", 1) in journal.files("artifacts")  # listed: ls quotes its names in "..."
    before = len(site.requests)
    with pytest.raises(BackendError) as failed:
        journal.read_bytes("artifacts/it's.txt")  # the journal's sync records the artifact as skipped, for this
    assert str(failed.value) == (
        f"cannot read {artifacts}/it's.txt through FirecREST: its server quotes paths in '...', "
        "which a ' in the name breaks; rename the file"
    )
    assert site.requests[before:] == []  # no request doomed to fail, three times

"""The fake UNICORE site, driven by the real pyunicore client: what a user of the client sees must hold."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pyunicore.client import Client, Job, JobStatus, Storage
from pyunicore.credentials import Anonymous, AuthenticationFailedException, BearerToken, UsernamePassword

from .fake_unicore import STANDARD_RESOURCES, FakeUnicore


@pytest.fixture
def site(tmp_path: Path):
    with FakeUnicore(tmp_path, users={"alice": "secret", "bob": "hunter2"}, tokens={"tok123": "alice"}) as site:
        yield site


@pytest.fixture
def client(site: FakeUnicore) -> Client:
    return Client(UsernamePassword("alice", "secret"), site.url)


@pytest.fixture
def home(client: Client) -> Storage:
    return next(storage for storage in client.get_storages() if storage.resource_url.endswith("/storages/HOME"))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


def submit(client: Client, description: dict, **kwargs) -> Job:
    job = client.new_job(description, **kwargs)
    # pyunicore caches job properties for 5 s by default; the tests want to see each state change.
    job.cache_time = 0
    return job


def run_to_end(client: Client, description: dict, **kwargs) -> Job:
    job = submit(client, description, **kwargs)
    wait_for(lambda: not job.is_running())
    return job


def process_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie waiting to be reaped has already died."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------ authentication


def test_basic_credentials_log_in_as_that_user(client: Client) -> None:
    assert client.access_info()["xlogin"]["UID"] == "alice"
    assert client.access_info()["role"]["selected"] == "user"
    assert client.server_version_info() == (10, 1, 0)


def test_bearer_token_logs_in_as_its_user(site: FakeUnicore) -> None:
    assert Client(BearerToken("tok123"), site.url).access_info()["xlogin"]["UID"] == "alice"


@pytest.mark.parametrize("credential", [UsernamePassword("alice", "wrong"), BearerToken("nope")])
def test_wrong_credentials_fail_authentication(site: FakeUnicore, credential) -> None:
    with pytest.raises(AuthenticationFailedException):
        Client(credential, site.url)


def test_anonymous_requests_are_refused_beyond_the_site_entry(site: FakeUnicore) -> None:
    anonymous = Client(Anonymous(), site.url)
    assert anonymous.access_info()["role"]["selected"] == "anonymous"
    with pytest.raises(httpx.HTTPError, match="403"):
        anonymous.get_jobs()


# ---------------------------------------------------------------------------------------------------- jobs


def test_new_job_uploads_inputs_before_it_runs(client: Client, site: FakeUnicore, tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text("hello from the laptop\n")

    job = run_to_end(client, {"Executable": "cat", "Arguments": ["input.txt"]}, inputs=[str(data)])

    assert job.status == JobStatus.SUCCESSFUL
    working_dir = job.working_dir
    assert working_dir.stat("stdout").read() == b"hello from the laptop\n"
    assert {"input.txt", "stdout", "stderr"} <= set(working_dir.listdir())
    # pyunicore asks for client stage-in as the string "true"; the site keeps what was sent.
    assert site.job_by_url(job.resource_url).description["haveClientStageIn"] == "true"


def test_imports_write_inline_data_and_copy_from_a_storage(client: Client, home: Storage, site: FakeUnicore) -> None:
    home.put(b"lr: 0.1\n", "configs/train.yaml")
    imports = [
        {"From": "inline://script", "To": "run.sh", "Data": ["echo inline ran", "cat conf/train.yaml"]},
        {"From": f"{site.url}/storages/HOME/files/configs/train.yaml", "To": "conf/train.yaml"},
    ]

    job = run_to_end(client, {"Executable": "bash run.sh", "Imports": imports})

    assert job.status == JobStatus.SUCCESSFUL
    assert job.working_dir.stat("stdout").read() == b"inline ran\nlr: 0.1\n"
    assert (
        site.read_storage_file(f"{job.working_dir.resource_url}/files/run.sh")
        == b"echo inline ran\ncat conf/train.yaml"
    )


def test_a_failed_import_fails_the_job_unless_fail_on_error_is_false(client: Client, site: FakeUnicore) -> None:
    missing = {"From": f"{site.url}/storages/HOME/files/nowhere.txt", "To": "data.txt"}
    strict = submit(client, {"Executable": "true", "Imports": [missing]})
    lenient = submit(client, {"Executable": "true", "Imports": [{**missing, "FailOnError": "false"}]})
    escaping = submit(client, {"Executable": "true", "Imports": [{"From": "inline://x", "To": "../x", "Data": ""}]})
    wait_for(lambda: not (strict.is_running() or lenient.is_running() or escaping.is_running()))

    assert strict.status == JobStatus.FAILED
    assert "nowhere.txt" in strict.properties["statusMessage"]
    assert lenient.status == JobStatus.SUCCESSFUL
    assert escaping.status == JobStatus.FAILED


def test_poll_waits_through_the_live_states_to_successful(client: Client, site: FakeUnicore) -> None:
    site.queue_seconds = 0.5
    job = submit(client, {"Executable": "true"})
    wait_for(lambda: job.status == JobStatus.QUEUED)

    job.poll()

    assert job.status == JobStatus.SUCCESSFUL
    assert job.exit_code == 0


def test_a_failing_command_ends_failed_with_its_exit_code(client: Client) -> None:
    job = submit(client, {"Executable": "echo oops >&2; exit 3"})

    job.poll()

    assert job.status == JobStatus.FAILED
    assert job.exit_code == 3
    assert job.working_dir.stat("stderr").read() == b"oops\n"
    assert any("User application exited with non-zero exit code: <3>." in line for line in job.log)


def test_ignore_non_zero_exit_code_lets_the_job_succeed(client: Client) -> None:
    job = run_to_end(client, {"Executable": "exit 5", "IgnoreNonZeroExitCode": True})

    assert job.status == JobStatus.SUCCESSFUL
    assert job.exit_code == 5


def test_environment_lines_are_the_servers_and_a_real_shell_reads_them(client: Client) -> None:
    # UNICORE/X writes NAME="value"; export NAME (TSIMessages.appendEnvironment): the job's shell expands it
    description = {
        "Executable": 'printf \'%s\\n\' "$GREETING" "$THREADS" "$UC_WORKING_DIRECTORY"',
        "Arguments": ["two words", "$GREETING"],
        "Environment": {"GREETING": "$UC_WORKING_DIRECTORY/x", "THREADS": 8},
        "Stdout": "logs/out.txt",
    }

    job = run_to_end(client, description)

    lines = job.working_dir.stat("logs/out.txt").read().decode().splitlines()
    assert lines[0] == lines[2] + "/x" and lines[1] == "8"
    assert lines[2].endswith(job.job_id)
    assert lines[3:] == ["two words", "$GREETING"]


def test_a_double_quote_in_an_environment_value_breaks_the_job_script_as_at_a_site(client: Client) -> None:
    job = run_to_end(client, {"Executable": "echo reached", "Environment": {"SECRET": 'pa$$"word'}})

    assert job.status == JobStatus.FAILED
    assert b"unexpected EOF" in job.working_dir.stat("stderr").read()


def test_login_node_commands_run_around_the_job(client: Client) -> None:
    ok = submit(client, {"Executable": "echo main > main.txt", "User postcommand": "cat main.txt > post.txt"})
    broken = submit(client, {"Executable": "echo main > main.txt", "User precommand": "echo no module >&2; exit 4"})
    wait_for(lambda: not (ok.is_running() or broken.is_running()))

    assert ok.status == JobStatus.SUCCESSFUL
    assert ok.working_dir.stat("post.txt").read() == b"main\n"
    assert broken.status == JobStatus.FAILED
    assert "User precommand failed with exit code 4: no module" in broken.properties["statusMessage"]
    assert "main.txt" not in broken.working_dir.listdir()


def test_get_jobs_filters_by_all_tags_pages_and_hides_other_users_jobs(client: Client, site: FakeUnicore) -> None:
    first = submit(client, {"Executable": "true", "Tags": ["mantik", "run-1"]})
    second = submit(client, {"Executable": "true", "Tags": ["mantik", "run-2"]})
    third = submit(client, {"Executable": "true", "Tags": ["other"]})
    assert site.job_urls() == [first.resource_url, second.resource_url, third.resource_url]

    assert [job.resource_url for job in client.get_jobs(tags=["mantik"])] == [first.resource_url, second.resource_url]
    assert [job.resource_url for job in client.get_jobs(tags=["mantik", "run-2"])] == [second.resource_url]
    assert [job.resource_url for job in client.get_jobs(offset=1, num=1)] == [second.resource_url]

    bob = Client(UsernamePassword("bob", "hunter2"), site.url)
    assert bob.get_jobs() == []
    with pytest.raises(httpx.HTTPError, match="403"):
        Job(bob.transport, first.resource_url).is_running()


def test_abort_kills_the_whole_process_group_and_fails_the_job(client: Client) -> None:
    # child.pid is renamed into place last, so once it is listed both files are complete.
    job = submit(client, {"Executable": "echo $$ > main.pid; sleep 30 & echo $! > tmp.pid; mv tmp.pid child.pid; wait"})
    wait_for(lambda: job.status == JobStatus.RUNNING and "child.pid" in job.working_dir.listdir())
    pids = [int(job.working_dir.stat(name).read()) for name in ("main.pid", "child.pid")]

    job.abort()

    assert job.status == JobStatus.FAILED
    assert "aborted" in job.properties["statusMessage"]
    wait_for(lambda: not any(process_alive(pid) for pid in pids), timeout=5)
    job.abort()  # aborting an ended job changes nothing
    assert job.status == JobStatus.FAILED


def test_restart_runs_a_finished_job_again(client: Client) -> None:
    job = run_to_end(client, {"Executable": "echo run >> runs.txt"})

    job.restart()

    wait_for(lambda: not job.is_running() and job.working_dir.stat("runs.txt").read() == b"run\nrun\n")
    assert job.status == JobStatus.SUCCESSFUL


def test_a_deleted_job_is_gone(client: Client) -> None:
    job = submit(client, {"Executable": "sleep 30"})

    job.delete()

    with pytest.raises(httpx.HTTPError, match="404"):
        job.is_running()
    assert client.get_jobs() == []


# ------------------------------------------------------------------------------------------------ storages


def test_storage_files_can_be_listed_moved_copied_and_removed(home: Storage) -> None:
    home.mkdir("empty")
    home.put(b"a", "sub/a.txt")

    assert set(home.listdir()) == {"empty", "sub"}
    assert home.listdir()["empty"].isdir()
    nested = home.listdir("sub")
    assert list(nested) == ["sub/a.txt"]
    assert nested["sub/a.txt"].read() == b"a"

    home.copy("sub/a.txt", "sub/b.txt")
    home.rename("sub/a.txt", "moved/a.txt")
    assert set(home.listdir("sub")) == {"sub/b.txt"}
    assert home.stat("moved/a.txt").read() == b"a"

    home.rm("sub/b.txt")
    home.rmdir("moved")
    assert set(home.listdir()) == {"empty", "sub"}
    with pytest.raises(httpx.HTTPError, match="404"):
        home.stat("moved/a.txt")


def test_range_reads_return_the_requested_bytes(home: Storage) -> None:
    home.put(b"0123456789", "digits.txt")
    digits = home.stat("digits.txt")

    assert digits.size() == 10
    assert digits.read(offset=3, size=4) == b"3456"
    assert digits.read(offset=7) == b"789"
    assert digits.read() == b"0123456789"


def test_paths_cannot_escape_the_storage(site: FakeUnicore) -> None:
    # Sent percent-encoded because httpx would otherwise resolve the dot segments before sending.
    response = httpx.get(
        f"{site.url}/storages/HOME/files/%2E%2E/%2E%2E/jobs",
        auth=("alice", "secret"),
        headers={"Accept": "application/json"},
    )

    assert response.status_code == 403
    assert "leaves the storage" in response.json()["errorMessage"]


# ---------------------------------------------------------------------------------- protocol and failures


def test_an_expired_session_is_retried_transparently(client: Client, site: FakeUnicore) -> None:
    client.get_jobs()
    calls_before = len(site.requests)

    site.expire_sessions()

    assert client.get_jobs() == []
    # One refused call with the stale session id, one accepted retry with the credentials.
    assert len(site.requests) - calls_before == 2


def test_an_injected_server_error_reaches_the_caller_with_its_message(client: Client, site: FakeUnicore) -> None:
    site.fail_next(500, "boom")

    with pytest.raises(httpx.HTTPError, match="boom"):
        client.get_jobs()
    assert client.get_jobs() == []  # only the next request fails


def test_a_slow_answer_times_out_although_the_submission_happened(client: Client, site: FakeUnicore) -> None:
    client.transport.timeout = 1
    site.hang_next(5, path_contains="/jobs")

    with pytest.raises(httpx.TimeoutException):
        client.new_job({"Executable": "true"})
    assert len(client.get_jobs()) == 1


def test_a_dropped_connection_is_a_transport_error(client: Client, site: FakeUnicore) -> None:
    site.drop_next(path_contains="/storages")

    with pytest.raises(httpx.TransportError):
        client.get_storages()
    assert len(client.get_storages()) == 1


# -- strict like the real server: each test pins one behaviour the module docstring lists ------------------


def strict_site(tmp_path: Path, **options) -> FakeUnicore:
    return FakeUnicore(tmp_path / "strict", users={"alice": "secret"}, queue_seconds=0.05, **options)


def test_the_factory_advertises_the_resource_database(tmp_path: Path) -> None:
    partitions = {"batch": {"Nodes": "1-4", "CPUsPerNode": "1-48"}, "gpus": {"Nodes": "1-2", "GPUS": "0-4"}}
    with strict_site(tmp_path, partitions=partitions) as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        (factory,) = client.transport.get(url=client.links["factories"])["factories"]
        assert client.transport.get(url=factory)["resources"] == partitions


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"CPUs": "96"}, "Resource <CPUs> is not available for partition <batch>"),
        ({"Queue": "gpus", "GPUsPerNode": "1"}, "Resource <GPUsPerNode> is not available for partition <gpus>"),
        ({"Queue": "booster"}, "Resource request <Queue = booster> is out of range."),
        ({"Nodes": "9"}, "Resource request <Nodes=9> is out of range."),
    ],
)
def test_a_resource_the_partition_does_not_define_fails_the_job_after_stage_in(tmp_path, resources, message) -> None:
    partitions = {"batch": {"Nodes": "1-4", "TotalCPUs": "1-96"}, "gpus": {"Nodes": "1-2", "GPUS": "0-4"}}
    with strict_site(tmp_path, partitions=partitions) as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        imports = [{"From": "inline://x", "To": "in.txt", "Data": "staged"}]
        job = run_to_end(client, {"Executable": "echo ran > ran.txt", "Resources": resources, "Imports": imports})
        assert job.status == JobStatus.FAILED  # a FAILED job, not a refused submission
        assert job.properties["statusMessage"] == message
        assert job.working_dir.stat("in.txt").read() == b"staged"  # after stage-in
        with pytest.raises(httpx.HTTPError):
            job.working_dir.stat("ran.txt")
        fine = run_to_end(client, {"Executable": "true", "Resources": {"Nodes": "2", "Reservation": "r1", "QoS": "x"}})
        assert fine.status == JobStatus.SUCCESSFUL  # reservations and QoS need no definition


def test_storages_exist_only_as_configured(tmp_path: Path) -> None:
    with strict_site(tmp_path, storages=["{user}-Home", "SCRATCH"]) as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        listed = client.transport.get(url=client.links["storages"])["storages"]
        assert listed == [f"{site.url}/storages/alice-Home", f"{site.url}/storages/SCRATCH"]
        with pytest.raises(httpx.HTTPError, match="404"):
            client.transport.put(
                url=f"{site.url}/storages/HOME/files/x",
                headers={"Content-Type": "application/octet-stream"},
                content=b"1",
            )
        source = {"From": f"{site.url}/storages/HOME/files/x", "To": "x"}
        job = run_to_end(client, {"Executable": "true", "Imports": [source]})
        assert job.status == JobStatus.FAILED


def test_a_job_is_destroyed_at_its_termination_time_unless_extended(tmp_path: Path) -> None:
    with strict_site(tmp_path, job_lifetime=2, max_lifetime=3600) as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        short, kept = run_to_end(client, {"Executable": "true"}), run_to_end(client, {"Executable": "true"})
        assert "terminationTime" in short.properties
        later = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(time.time() + 600))
        assert client.transport.put(url=kept.resource_url, json={"terminationTime": later}).json() == {
            "terminationTime": "OK"
        }
        too_late = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(time.time() + 7200))
        answer = client.transport.put(url=kept.resource_url, json={"terminationTime": too_late}).json()
        assert "larger than maximum" in answer["terminationTime"]
        workdir = site.job_by_url(short.resource_url).workdir
        time.sleep(2.2)
        with pytest.raises(httpx.HTTPError, match="404"):
            client.transport.get(url=short.resource_url)
        assert not workdir.exists()
        assert client.transport.get(url=kept.resource_url)["status"] == "SUCCESSFUL"


def test_a_job_past_its_runtime_fails_without_an_exit_code(client: Client) -> None:
    job = run_to_end(client, {"Executable": "sleep 30", "Resources": {"Runtime": "1"}})

    assert job.status == JobStatus.FAILED
    assert job.properties["statusMessage"].startswith("Job did not complete normally on BSS")
    assert "exitCode" not in job.properties  # a time limit, an OOM kill, a node failure: all look alike


def test_a_lost_answer_after_handling_leaves_the_job_created(site: FakeUnicore, client: Client) -> None:
    site.drop_next(path_contains="/jobs", after_handling=True)
    with pytest.raises(httpx.HTTPError):
        client.transport.post(url=f"{site.url}/jobs", json={"Executable": "true", "Tags": ["t1"]})
    assert len(site.job_urls()) == 1


# ------------------------------------------------------------------------ what reaches the batch system

SLURM_VIEW = 'printf "%s|%s|%s\\n" "$SLURM_JOB_NAME" "${SLURM_MEM_PER_NODE-unset}" "${SLURM_GPUS_PER_NODE-unset}"'


@pytest.mark.parametrize(
    ("name", "resources", "seen"),
    [
        ("mantik.sweep", {}, "mantik.sweep|unset|unset"),
        ("mantik-sweep", {}, "UNICORE_job|unset|unset"),  # '-' is not in the TSI's [0-9a-zA-Z.:=~/]
        ("a:b=c~d/e.f", {"MemoryPerNode": "1G"}, "a:b=c~d/e.f|1024|unset"),
        ("m", {"MemoryPerNode": "1536M"}, "m|1536|unset"),
        ("m", {"MemoryPerNode": "64G"}, "m|unset|unset"),  # 2^36 narrowed to an int is 0: left out
        ("m", {"MemoryPerNode": "3G"}, "m|unset|unset"),  # negative as an int: left out
        ("m", {"Memory": "5G"}, "m|1024|unset"),  # 5 GiB narrowed is 1 GiB: the job gets less than asked
        ("m", {"GPUsPerNode": "4"}, "m|unset|unset"),  # written with the memory value, -1: no GPUs
        ("m", {"GPUsPerNode": "4", "MemoryPerNode": "1G"}, "m|1024|1024"),  # 1024 GPUs asked for
    ],
)
def test_the_batch_system_gets_what_the_slurm_tsi_makes_of_the_request(tmp_path, name, resources, seen) -> None:
    with strict_site(tmp_path, partitions={"batch": {**STANDARD_RESOURCES}}) as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        job = run_to_end(client, {"Name": name, "Executable": SLURM_VIEW, "Resources": resources})
        assert job.status == JobStatus.SUCCESSFUL, job.properties["statusMessage"]
        assert job.working_dir.stat("stdout").read().decode().strip() == seen
        assert job.properties["name"] == name  # UNICORE/X itself keeps the name


def test_a_site_without_login_node_commands_runs_them_in_the_job_script(tmp_path: Path) -> None:
    with strict_site(tmp_path, login_commands="batch") as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        description = {
            "Executable": 'echo "main sees ${LOADED-nothing}"; sh -c "exit 3"',
            "User precommand": "export LOADED=module; false",  # its exit code is ignored there
            "User postcommand": "echo post after the failure",
        }
        job = run_to_end(client, description)
        assert job.status == JobStatus.FAILED and job.exit_code == 3
        assert job.working_dir.stat("stdout").read().decode().splitlines() == [
            "main sees module",  # in the same script: what the precommand sets reaches the job
            "post after the failure",
        ]


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ({"Executable": "true"}, "Cannot execute <true>. Only Applications may be executed on this site."),
        (
            {"ApplicationName": "Date", "User precommand": "mkdir x"},
            "Cannot execute user pre-command - user executables are forbidden on this site.",
        ),
    ],
)
def test_a_site_forbidding_user_executables_fails_the_job(tmp_path: Path, description, message) -> None:
    with strict_site(tmp_path, login_commands="forbidden") as site:
        client = Client(UsernamePassword("alice", "secret"), site.url)
        job = run_to_end(client, description)
        assert job.status == JobStatus.FAILED
        assert job.properties["statusMessage"] == message

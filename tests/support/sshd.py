"""A real sshd of the test run's own on 127.0.0.1 (keys made here) in front of this machine, where the test run's
Slurm is: the login node of the Slurm-over-SSH tests (the ``sshd`` fixture,
``sshd_of_the_module`` here: one per module that imports it).

Its log counts what a client did: ``logins()`` (connections authenticated) and ``commands()`` (commands run,
each a session of a connection, as OpenSSH's multiplexed connection runs them)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from mantik_spec.backends.ssh import control_directory

from ..conftest import missing
from .slurm import slurm_is_up
from .specs import slurm_spec

SSHD = "/usr/sbin/sshd"


class Sshd:
    """An sshd of our own on a free port of 127.0.0.1, accepting one generated user key."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("hostkey", "userkey", "otherkey", "otherhostkey"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True)
        shutil.copy(directory / "userkey.pub", directory / "authorized_keys")
        os.chmod(directory / "authorized_keys", 0o600)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = directory / "sshd.log"
        (directory / "sshd_config").write_text(
            textwrap.dedent(
                f"""
                Port {self.port}
                ListenAddress 127.0.0.1
                HostKey {directory / "hostkey"}
                AuthorizedKeysFile {directory / "authorized_keys"}
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                StrictModes no
                PidFile {directory / "sshd.pid"}
                UsePAM no
                LogLevel VERBOSE
                # sessions (and the jobs they submit) reach the test run's own Slurm, never the machine's
                SetEnv SLURM_CONF={os.environ["SLURM_CONF"]}
                """
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        subprocess.run([SSHD, "-f", str(directory / "sshd_config"), "-E", str(self.log)], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.1)
        self.known_hosts = directory / "known_hosts"
        self.record_host_key("hostkey")

    def record_host_key(self, key: str) -> None:
        """known_hosts naming ``key`` as the server's: the real one, or another (a changed key)."""
        public = (self.directory / f"{key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")

    def logins(self) -> int:
        """Connections authenticated so far."""
        return len(re.findall(r"Accepted publickey", self.log.read_text()))

    def commands(self) -> int:
        """Commands run so far (sshd logs each session it starts: ``Starting session: command for ...``)."""
        return len(re.findall(r"Starting session: command ", self.log.read_text()))

    def close_connection(self, user: str = "root") -> None:
        """End the client's shared connection (ControlMaster) to this sshd, so the next command logs in afresh.
        ssh names its socket by host, port and user (%C): another sshd's connection, on its own port, stays."""
        control = os.path.join(control_directory(), "cm-%C")
        destination = ["-p", str(self.port), "-l", user, "127.0.0.1"]
        subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", *destination], capture_output=True)

    def stop(self) -> None:
        pid = (self.directory / "sshd.pid").read_text().strip()
        subprocess.run(["kill", pid], check=False)


@pytest.fixture(scope="module", name="sshd")
def sshd_of_the_module(tmp_path_factory, slurm_cluster):
    """``sshd``: one per module that imports this fixture (skipped without sshd or Slurm; a failure under CI).
    Named apart from the fixture so that the tests taking ``sshd`` do not shadow the import."""
    if not Path(SSHD).exists():
        missing("sshd is not installed (apt-get install openssh-server)")
    assert slurm_is_up(), slurm_cluster.logs()
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def ssh_spec(sshd: Sshd, workdir: Path, lrs: str = "[0.1, 0.2, 0.3]", key: str = "userkey") -> str:
    """The Slurm tests' spec (tests/support/specs.py ``slurm_spec``), reaching the login node through ``sshd``."""
    anchor = "    poll_interval: 0.5s\n"
    spec = slurm_spec(lrs=lrs)
    assert anchor in spec
    return spec.replace(
        anchor,
        anchor
        + textwrap.indent(
            textwrap.dedent(
                f"""
                workdir: {workdir}
                ssh:
                  host: 127.0.0.1
                  port: {sshd.port}
                  user: root
                  identity_file: {sshd.directory / key}
                  known_hosts_file: {sshd.known_hosts}
                """
            ).lstrip("\n"),
            "    ",
        ),
    )

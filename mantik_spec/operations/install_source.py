"""Where a CI job installs mantik-spec from: the source this installation came from, pinned.

A generated pipeline must install the same tool the user ran ``mantik init`` with, from a
source the CI runner can reach. pip records where a distribution came from in its
``direct_url.json`` (PEP 610); a distribution without one came from a package index.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError

DISTRIBUTION = "mantik-spec"


def ci_install_command(explicit: str | None = None) -> str:
    """The shell line a CI job runs to install mantik-spec.

    ``explicit`` (``mantik init --install``) wins: a pip requirement (``mantik-spec==0.2``,
    ``git+https://host/org/mantik-spec@v0.2``) or a whole command (starting with ``pip`` or
    ``python``). Otherwise the line pins what is installed here: the VCS URL and commit pip
    recorded, the origin remote and pushed commit of an editable git checkout, or the version
    from the package index. Raises :class:`UserError` when none of these reaches a CI runner.
    """
    if explicit is not None:
        explicit = explicit.strip()
        if not explicit or "\n" in explicit:
            raise UserError("--install: give one pip requirement or one command line")
        if explicit.split()[0] in ("pip", "pip3", "python", "python3", "uv", "pipx"):
            return explicit
        return f"pip install {_quote(explicit)}"
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise UserError(_no_source("mantik-spec is not installed as a distribution here")) from None
    recorded = distribution.read_text("direct_url.json")
    if not recorded:  # installed from an index: the same index serves the same version
        return f"pip install {_quote(f'{DISTRIBUTION}=={distribution.version}')}"
    return f"pip install {_quote(_requirement(json.loads(recorded)))}"


def _requirement(direct_url: dict) -> str:
    url = direct_url.get("url", "")
    vcs = direct_url.get("vcs_info")
    if vcs and vcs.get("vcs") == "git" and vcs.get("commit_id"):
        return f"{DISTRIBUTION} @ git+{url}@{vcs['commit_id']}"
    parsed = urlparse(url)
    if parsed.scheme == "file" and direct_url.get("dir_info") is not None:
        return _from_checkout(Path(parsed.path))
    if parsed.scheme in ("http", "https"):  # an archive or wheel at a URL anyone with access can fetch
        return f"{DISTRIBUTION} @ {url}"
    raise UserError(_no_source(f"mantik-spec was installed from {url}, which a CI runner cannot reach"))


def _from_checkout(directory: Path) -> str:
    """A local git checkout: its origin remote at the commit installed, if that commit was pushed."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    remote = git("remote", "get-url", "origin")
    commit = git("rev-parse", "HEAD")
    if not remote or not commit:
        raise UserError(_no_source(f"mantik-spec was installed from {directory}, which has no git remote"))
    if "://" not in remote:
        host, colon, path = remote.partition(":")
        if not colon or "/" in host:  # a path on this machine: no CI runner reaches it
            raise UserError(_no_source(f"the remote of {directory} is the local path {remote}"))
        remote = f"ssh://{host}/{path}"  # scp-like git@host:org/repo, which pip wants as a URL
    # a CI clone's origin often carries a token (https://gitlab-ci-token:TOKEN@host/...): never write it into
    # a committed file; ssh's user name (git@) is no secret and ssh needs it
    remote = re.sub(r"^(https?://)[^/@]*@", r"\1", remote)
    if not git("branch", "-r", "--contains", commit):
        raise UserError(_no_source(f"commit {commit[:7]} of {directory} is not pushed to {remote}"))
    return f"{DISTRIBUTION} @ git+{remote}@{commit}"


def _no_source(why: str) -> str:
    return (
        f"cannot tell where CI can install mantik-spec from: {why}; pass "
        "--install 'git+https://HOST/ORG/mantik-spec@TAG' (or a requirement your package index serves)"
    )


def _quote(requirement: str) -> str:
    return shlex.quote(requirement)

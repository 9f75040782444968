"""What the job gets is exactly the committed tree: built from git's objects, compared with `git ls-tree`.

Real git repositories with the cases that break a copy made another way: export attributes, symbolic
links pointing anywhere, executable bits, submodules, non-ASCII names, a large file (streamed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mantik_spec.backends.hosts import LocalHost
from mantik_spec.backends.staging import code_archive, unpack
from mantik_spec.state.git import ProjectRepo

from .conftest import BASIC_SPEC, TRAIN_SCRIPT, Project, git
from .support.project import peak_rss_kib
from .support.slurm import slurm_is_up

# the job's own view of its working directory, written where the test can read it
LIST_TREE = textwrap.dedent(
    """
    import json, os, stat
    listing = {}
    for top, dirs, files in os.walk("."):
        for name in dirs + files:
            path = os.path.join(top, name)[2:]
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                listing[path] = ["link", os.readlink(path)]
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    listing[path] = ["file", bool(info.st_mode & 0o100), handle.read().hex()]
    with open(os.environ["TREE_OUT"], "w") as out:
        json.dump(listing, out)
    """
)

LIST_SPEC = textwrap.dedent(
    """
    version: 1
    project: shipped
    entry_points:
      main:
        command: python list_tree.py
    backends:
      local: {type: local}
    experiments:
      tree:
        entry_point: main
    """
)


def committed_tree(repository: Path, treeish: str, prefix: str = "") -> dict[str, list]:
    """What `git ls-tree -r` says the tree holds (submodules expanded at their commit), in the job's terms."""
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "-z", treeish], cwd=repository, capture_output=True, check=True
    ).stdout
    tree: dict[str, list] = {}
    for record in filter(None, listing.split(b"\0")):
        meta, path = record.split(b"\t", 1)
        mode, _, sha = meta.decode().split()
        name = prefix + os.fsdecode(path)
        content = subprocess.run(["git", "cat-file", "-p", sha], cwd=repository, capture_output=True).stdout
        if mode == "120000":
            tree[name] = ["link", os.fsdecode(content)]
        elif mode == "160000":
            tree.update(committed_tree(repository / os.fsdecode(path), sha, name + "/"))
        else:
            tree[name] = ["file", mode == "100755", content.hex()]
    return tree


def on_disk(directory: Path) -> dict[str, list]:
    """The same view of a directory: files (executable?, bytes), links (target); directories implied."""
    tree = {}
    for top, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(top) / name
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink():
                tree[relative] = ["link", os.readlink(path)]
            elif path.is_file():
                tree[relative] = ["file", bool(path.stat().st_mode & 0o100), path.read_bytes().hex()]
    return tree


def make_library(tmp_path: Path) -> Path:
    library = tmp_path / "library"
    library.mkdir()
    git(library, "init", "-q", "-b", "main")
    (library / "helpers.py").write_text("VALUE = 42\n")
    (library / "nested").mkdir()
    (library / "nested" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (library / "nested" / "tool.sh").chmod(0o755)
    git(library, "add", "-A")
    git(library, "commit", "-qm", "library")
    return library


@pytest.fixture
def awkward(tmp_path) -> Project:
    """A repository with every kind of entry a copy made another way gets wrong."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    proj = Project(path)
    proj.write("mantik.yaml", LIST_SPEC)
    proj.write("list_tree.py", LIST_TREE)
    proj.write(".gitattributes", "config/settings.yaml export-ignore\nversion.txt export-subst\n")
    proj.write("config/settings.yaml", "lr: 0.1\n")
    proj.write("version.txt", "built from $Format:%H$\n")
    proj.write("run.sh", "#!/bin/sh\necho run\n")
    (path / "run.sh").chmod(0o755)
    proj.write("données/été.txt", "non-ASCII name\n")
    proj.write("src/model.py", "MODEL = 1\n")
    os.symlink("src/model.py", path / "inside")  # relative, inside the repository
    os.symlink("src", path / "package")  # a link to a directory
    os.symlink("../elsewhere/shared.txt", path / "outside")  # relative, leaving the repository
    os.symlink("/p/scratch/project/data", path / "data")  # absolute: common on HPC
    os.symlink("missing.txt", path / "dangling")
    library = make_library(tmp_path)
    git(path, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "libs/library")
    proj.commit("awkward tree")
    return proj


def test_export_is_exactly_the_committed_tree(awkward, tmp_path):
    commit = git(awkward.path, "rev-parse", "HEAD").strip()
    destination = tmp_path / "export"
    ProjectRepo(awkward.path).export(commit, destination)
    expected = committed_tree(awkward.path, commit)
    assert on_disk(destination) == expected
    # the cases a `git archive` copy got wrong, spelled out
    assert expected["config/settings.yaml"] and expected["version.txt"][2] == b"built from $Format:%H$\n".hex()
    assert expected["data"] == ["link", "/p/scratch/project/data"]
    assert expected["outside"] == ["link", "../elsewhere/shared.txt"]
    assert expected["run.sh"][1] is True and expected["libs/library/nested/tool.sh"][1] is True
    assert "données/été.txt" in expected


def test_export_of_a_project_in_a_subdirectory(awkward, tmp_path):
    (awkward.path / "sub").mkdir()
    os.symlink("../src", awkward.path / "sub" / "up")
    awkward.write("sub/mantik.yaml", LIST_SPEC)
    awkward.write("sub/list_tree.py", LIST_TREE)
    commit = awkward.commit("a project in a subdirectory")
    destination = tmp_path / "export"
    ProjectRepo(awkward.path / "sub").export(commit, destination)
    assert on_disk(destination) == committed_tree(awkward.path, f"{commit}:sub")


@pytest.mark.e2e
def test_local_job_gets_exactly_the_committed_tree(awkward, tmp_path):
    out = tmp_path / "job-tree.json"
    awkward.mantik("apply", "--auto-approve", "--wait", env={"TREE_OUT": str(out)})
    [run] = awkward.runs()
    assert run.info.status == "FINISHED"
    commit = run.data.tags["mantik.commit"]
    assert json.loads(out.read_text()) == committed_tree(awkward.path, commit)


def test_staged_copies_keep_the_committed_tree(awkward, tmp_path):
    """Slurm's staging on this machine and the archive sent over SSH and to UNICORE: same tree, minus the spec."""
    commit = git(awkward.path, "rev-parse", "HEAD").strip()
    export = tmp_path / "export"
    ProjectRepo(awkward.path).export(commit, export)
    expected = committed_tree(awkward.path, commit)
    del expected["mantik.yaml"]  # like the run key, staging leaves the spec out
    LocalHost().put_tree(export, str(tmp_path / "staged"))
    assert on_disk(tmp_path / "staged") == expected
    with code_archive(export, []) as archive:
        unpack(archive.path.read_bytes(), tmp_path / "unpacked")
    assert on_disk(tmp_path / "unpacked") == expected


def test_a_submodule_not_in_this_clone_is_refused_at_plan_naming_it(project):
    missing = "1234567890abcdef1234567890abcdef12345678"
    git(project.path, "update-index", "--add", "--cacheinfo", f"160000,{missing},vendor/ghost")
    git(project.path, "commit", "-qm", "a submodule whose commit this clone never had")
    result = project.mantik("plan", check=1)
    [line] = result.stderr.strip().splitlines()
    assert "submodule vendor/ghost (commit 1234567890ab) is not in this clone" in line
    assert "git submodule update --init" in line
    project.mantik("apply", "--auto-approve", check=1)
    assert project.runs() == []  # nothing recorded: no run claims a tree its job did not get


def test_an_uninitialised_submodule_is_refused_at_plan(tmp_path):
    library = make_library(tmp_path)
    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / "mantik.yaml").write_text(BASIC_SPEC)
    (origin / "train.py").write_text(TRAIN_SCRIPT)
    git(origin, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "libs/library")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "with a submodule")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))  # without --recurse-submodules
    result = Project(clone).mantik("plan", check=1)
    assert "submodule libs/library" in result.stderr and "is not in this clone" in result.stderr
    git(clone, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")
    Project(clone).mantik("plan", check=0)


@pytest.mark.slow
def test_a_large_committed_file_is_streamed_not_held_in_memory(tmp_path):
    """`mantik apply` ships a large committed file with about the memory `plan` needs: it is streamed."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    proj = Project(path)
    proj.write("mantik.yaml", LIST_SPEC.replace("python list_tree.py", "python -c pass"))
    size = 64 << 20
    with open(path / "weights.bin", "wb") as handle:  # incompressible, like real weights
        for _ in range(size >> 20):
            handle.write(os.urandom(1 << 20))
    proj.commit("weights")
    planning = peak_rss_kib(proj, "plan")  # also creates the store: apply's extra is the shipping
    applying = peak_rss_kib(proj, "apply", "--auto-approve")
    [export] = list((path / ".mantik" / "code").iterdir())
    assert (export / "weights.bin").stat().st_size == size
    extra = (applying - planning) * 1024
    assert extra < size // 4, f"apply needed {extra >> 20} MiB more than plan to ship a {size >> 20} MiB file"


POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 1234\n".format("ab" * 32)


def test_git_lfs_files_ship_as_their_committed_pointers_and_plan_says_so(project, tmp_path):
    project.write(".gitattributes", "*.bin filter=lfs diff=lfs merge=lfs -text\n")
    project.write("model/weights.bin", POINTER)  # what `git lfs` commits; the content stays in its store
    project.write("mantik.yaml", BASIC_SPEC.replace("code: {paths: [train.py]}\n", ""))
    commit = project.commit("an LFS-managed file")
    plan = project.mantik("plan")
    assert "1 committed file(s) are Git LFS pointers (model/weights.bin)" in plan.stdout + plan.stderr
    ProjectRepo(project.path).export(commit, tmp_path / "export")
    assert (tmp_path / "export" / "model" / "weights.bin").read_text() == POINTER


def test_a_file_name_that_is_not_utf8_is_shipped_as_committed(project, tmp_path):
    name = os.fsdecode(b"caf\xe9.txt")  # Latin-1 bytes, as old archives have them
    (project.path / name).write_text("latin-1 name\n")
    commit = project.commit("a name that is not UTF-8")
    ProjectRepo(project.path).export(commit, tmp_path / "export")
    assert on_disk(tmp_path / "export") == committed_tree(project.path, commit)
    assert (tmp_path / "export" / name).read_text() == "latin-1 name\n"
    project.mantik("plan")  # the name does not break the listing that computes the key


@pytest.mark.e2e
def test_slurm_job_reads_the_committed_tree(awkward, tmp_path, slurm_cluster):
    """On the real Slurm (the test run's own): the staged copy is the committed tree, and the job reads it
    through its run directory."""
    assert slurm_is_up(), slurm_cluster.logs()
    workdir = tmp_path / "cluster"
    awkward.write(
        "mantik.yaml",
        LIST_SPEC.replace(
            "local: {type: local}",
            f"cluster: {{type: slurm, partition: debug, workdir: {workdir}, python: {sys.executable}, "
            "resources: {ntasks: 1, mem: 200M, time: '00:05:00'}, poll_interval: 0.5s}",
        ).replace("entry_point: main", "entry_point: main\n    backend: cluster"),
    )
    commit = awkward.commit("on slurm")
    out = tmp_path / "job-tree.json"
    awkward.mantik("apply", "--auto-approve", "--wait", env={"TREE_OUT": str(out)}, timeout=300)
    [run] = awkward.runs()
    assert run.info.status == "FINISHED"
    expected = committed_tree(awkward.path, commit)
    del expected["mantik.yaml"]  # like the run key, staging leaves the spec out
    assert on_disk(workdir / "code" / commit) == expected
    seen = json.loads(out.read_text())  # the run directory links each top-level entry to the staged copy
    top_level = {name.split("/")[0] for name in expected}
    assert {name for name in seen if name in top_level} == top_level
    # the job works in runs/RUN_ID/work/, beside (not among) mantik's own run files
    assert all(seen[name] == ["link", f"../../../code/{commit}/{name}"] for name in top_level)
    assert os.readlink(Path(workdir / "code" / commit / "data")) == "/p/scratch/project/data"


def test_code_identity_is_still_the_digest_of_the_ls_tree_lines(awkward):
    """Reading git's objects directly keeps every existing run key: the identity is the same bytes as before."""
    import hashlib

    listing = subprocess.run(
        ["git", "ls-tree", "-r", "-z", "HEAD"], cwd=awkward.path, capture_output=True, check=True
    ).stdout
    records = [r for r in listing.split(b"\0") if r and r.split(b"\t", 1)[1] != b"mantik.yaml"]
    expected = hashlib.sha256(b"".join(r + b"\n" for r in records)).hexdigest()
    assert ProjectRepo(awkward.path).code_version(None).identity == expected


@pytest.mark.e2e
def test_a_tree_that_cannot_be_written_is_one_line_and_leaves_no_run(project):
    project.mantik("plan")  # the store and .mantik/ exist
    (project.path / ".mantik" / "code").write_text("in the way of the export directory\n")
    result = project.mantik("apply", "--auto-approve", check=1)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: cannot write the committed tree into ") and "Traceback" not in result.stderr
    assert project.runs() == []  # no record claims a tree no job got

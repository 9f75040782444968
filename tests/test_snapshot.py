"""`--scratch` snapshots (ProjectRepo.take_snapshot): the working tree as a commit on HEAD, taken without
touching what the user has (HEAD, branch, index, working tree, stash: byte for byte), on a detached HEAD and
for a project in a subdirectory; none when only files outside the code changed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mantik_spec.state.git import ProjectRepo

from .conftest import git


def state(root: Path) -> dict:
    """What the user has: HEAD as written, every ref, the index file, the stash and the working tree, as bytes."""
    files = {}
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d != ".git"]
        for name in names:
            path = Path(directory, name)
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "HEAD": (root / ".git" / "HEAD").read_bytes(),
        "refs": git(root, "for-each-ref", "--format=%(refname) %(objectname)"),
        "index": (root / ".git" / "index").read_bytes(),
        "stash": git(root, "stash", "list", "--format=%H %s"),
        "files": files,
    }


@pytest.fixture
def repository(tmp_path) -> Path:
    """A project with committed code, a stash entry, a staged and an unstaged edit and an untracked file."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "src").mkdir()
    (root / "src" / "model.py").write_text("lr = 0.1\n")
    (root / "notes.md").write_text("notes\n")
    (root / "mantik.yaml").write_text("version: 1\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    (root / "notes.md").write_text("stashed\n")
    git(root, "stash", "-q")
    (root / "src" / "model.py").write_text("lr = 0.2\n")
    git(root, "add", "src/model.py")
    (root / "src" / "model.py").write_text("lr = 0.3\n")  # unstaged on top of the staged edit
    (root / "src" / "new.py").write_text("print('new')\n")
    return root


def snapshot_file(root: Path, commit: str, path: str) -> str:
    return git(root, "show", f"{commit}:{path}")


def test_the_snapshot_holds_the_working_tree_and_leaves_everything_as_it_was(repository):
    before = state(repository)
    head = git(repository, "rev-parse", "HEAD").strip()
    repo = ProjectRepo(repository)
    commit = repo.take_snapshot()
    assert commit and git(repository, "rev-parse", f"{commit}^").strip() == head
    assert snapshot_file(repository, commit, "src/model.py") == "lr = 0.3\n"  # the working tree, not the index
    assert snapshot_file(repository, commit, "src/new.py") == "print('new')\n"
    assert repo.head_commit() == commit and repo.uncommitted(None) == []
    assert state(repository) == before
    assert ProjectRepo(repository).take_snapshot() == commit  # the same tree on the same HEAD: the same commit
    assert state(repository) == before


def test_a_snapshot_on_a_detached_head(repository):
    git(repository, "stash", "-q")  # the edits, so that the checkout is clean to detach
    git(repository, "checkout", "-q", "--detach")
    git(repository, "stash", "apply", "-q", "stash@{0}")
    before = state(repository)
    head = git(repository, "rev-parse", "HEAD").strip()
    repo = ProjectRepo(repository)
    commit = repo.take_snapshot()
    assert commit and git(repository, "rev-parse", f"{commit}^").strip() == head
    assert repo.code_version(None).branch is None and repo.code_version(None).scratch
    assert state(repository) == before
    assert (repository / ".git" / "HEAD").read_text().strip() == head  # still detached where it was


def test_a_project_in_a_subdirectory_snapshots_its_own_files(repository):
    project = repository / "src"
    (repository / "notes.md").write_text("outside the project\n")
    before = state(repository)
    repo = ProjectRepo(project)
    commit = repo.take_snapshot()
    assert commit and snapshot_file(repository, commit, "src/model.py") == "lr = 0.3\n"
    assert snapshot_file(repository, commit, "notes.md") == "notes\n"  # outside the project: HEAD's
    assert state(repository) == before
    # the identity is the one the same files get once committed
    identity = repo.code_version(None).identity
    git(repository, "add", "src")
    git(repository, "commit", "-q", "-m", "the scratch change")
    assert ProjectRepo(project).code_version(None).identity == identity


def test_no_snapshot_when_only_files_outside_the_code_changed(repository):
    git(repository, "stash", "-q", "--include-untracked")  # code as committed
    git(repository, "stash", "drop", "-q")
    (repository / "notes.md").write_text("a thought\n")
    before = state(repository)
    repo = ProjectRepo(repository)
    assert repo.take_snapshot(["src", "mantik.yaml"]) is None
    assert repo.unsnapshotted == ("notes.md",) and repo.scratch is None
    assert state(repository) == before
    (repository / "mantik.yaml").write_text("version: 1\nproject: p\n")  # the spec counts
    assert ProjectRepo(repository).take_snapshot(["src", "mantik.yaml"])


def test_lfs_files_are_read_from_the_repository_index_in_a_snapshot(repository):
    """Which files are Git LFS pointers comes from the attributes in the real index, as in a plain run."""
    git(repository, "stash", "-q")
    (repository / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (repository / "src" / "weights.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    git(repository, "add", "-A")
    git(repository, "commit", "-q", "-m", "lfs")
    (repository / "src" / "model.py").write_text("lr = 0.5\n")
    repo = ProjectRepo(repository)
    assert repo.take_snapshot()
    assert repo.code_version(None).lfs_pointers == ("src/weights.bin",)
    assert "GIT_INDEX_FILE" not in os.environ

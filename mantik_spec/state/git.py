"""The git commit as the reproducibility anchor.

What counts as code is the committed tree under ``code.paths`` (default: the
project directory minus ``mantik.yaml`` and ``.mantik/``); the working
directory never runs.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..spec.load import SPEC_FILE
from ..spec.yamlload import Problem, SpecError

STATE_DIR = ".mantik"


class GitError(Exception):
    """A repository problem the user must fix (no commit, not a repository...)."""


@dataclass(frozen=True)
class CodeVersion:
    commit: str
    identity: str  # sha256 over the committed entries of code.paths
    branch: str | None
    repo_url: str | None
    dirty: tuple[str, ...]  # uncommitted files under code.paths, relative to the project

    def dirty_summary(self, limit: int = 10) -> str:
        return ", ".join(self.dirty[:limit]) + (
            f" and {len(self.dirty) - limit} more" if len(self.dirty) > limit else ""
        )


class ProjectRepo:
    def __init__(self, project_root: Path):
        import git  # gitpython: not needed by `validate`

        try:
            self.repo = git.Repo(project_root, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(f"{project_root} is not inside a git repository (run `git init`)") from None
        self.root = Path(self.repo.working_tree_dir).resolve()
        self.project_root = Path(project_root).resolve()
        prefix = self.project_root.relative_to(self.root).as_posix()
        self.prefix = "" if prefix == "." else prefix + "/"

    def head_commit(self) -> str:
        try:
            return self.repo.head.commit.hexsha
        except ValueError:
            raise GitError("the repository has no commit yet: commit your code first") from None

    def _git_paths(self, code_paths: list[str] | None) -> list[str]:
        if not code_paths:
            return [self.prefix or "."]
        return [self.prefix + p.rstrip("/") for p in code_paths]

    def _excluded(self, path: str, code_paths: list[str] | None) -> bool:
        relative = path[len(self.prefix) :]
        return code_paths is None and (relative == SPEC_FILE or relative.startswith(STATE_DIR + "/"))

    def code_version(self, code_paths: list[str] | None, also_committed: list[str] = ()) -> CodeVersion:
        """The code identity at HEAD; ``dirty`` lists uncommitted files under the code paths and in
        ``also_committed`` (the .dvc files that pin data versions)."""
        commit = self.head_commit()
        listing = self.repo.git.ls_tree("-r", "-z", "--full-tree", commit, "--", *self._git_paths(code_paths))
        entries = [e for e in listing.split("\0") if e and not self._excluded(e.split("\t", 1)[1], code_paths)]
        if code_paths:
            self._check_paths_committed(code_paths, entries)
        digest = hashlib.sha256()
        for entry in entries:
            meta, path = entry.split("\t", 1)
            digest.update(f"{meta}\t{path[len(self.prefix) :]}\n".encode())
        return CodeVersion(
            commit=commit,
            identity=digest.hexdigest(),
            branch=None if self.repo.head.is_detached else self.repo.active_branch.name,
            repo_url=self._remote_url(),
            dirty=tuple(
                sorted(set(self.uncommitted(code_paths)) | set(self._uncommitted_extra(code_paths, also_committed)))
            ),
        )

    def _check_paths_committed(self, code_paths: list[str], entries: list[str]) -> None:
        committed = [e.split("\t", 1)[1][len(self.prefix) :] for e in entries]
        missing = [
            (i, p)
            for i, p in enumerate(code_paths)
            if not any(c == p.rstrip("/") or c.startswith(p.rstrip("/") + "/") for c in committed)
        ]
        if missing:
            raise SpecError(
                [
                    Problem(SPEC_FILE, None, f"code.paths[{i}]", f"'{p}' has nothing committed at HEAD")
                    for i, p in missing
                ]
            )

    def uncommitted(self, code_paths: list[str] | None) -> list[str]:
        status = self.repo.git.status("--porcelain", "-z", "--untracked-files=all", "--", *self._git_paths(code_paths))
        files = []
        records = iter(status.split("\0"))
        for record in records:
            if not record:
                continue
            code, path = record[:2], record[3:]  # paths are relative to the repository root
            if code[0] in "RC":
                next(records, None)  # the rename's source path follows
            if path.startswith(self.prefix) and not self._excluded(path, code_paths):
                files.append(path[len(self.prefix) :])
        return sorted(files)

    def _uncommitted_extra(self, code_paths: list[str] | None, paths: list[str]) -> list[str]:
        if not code_paths or not paths:
            return []  # the whole project is code: its status covers these files already
        return self.uncommitted(list(paths))

    def _remote_url(self) -> str | None:
        try:
            url = self.repo.remotes.origin.url
        except (AttributeError, IndexError, ValueError):
            return None
        # never record a password or token that may sit in the remote URL
        return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)

    def export(self, commit: str, destination: Path) -> None:
        """Write the committed project tree at ``commit`` into ``destination``."""
        tree = f"{commit}:{self.prefix.rstrip('/')}" if self.prefix else commit
        data = self.repo.git.archive("--format=tar", tree, stdout_as_string=False)
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(destination, filter="data")

    def has_commit(self, commit: str) -> bool:
        import git

        try:
            self.repo.git.cat_file("-e", f"{commit}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def worktree(self, commit: str, destination: Path) -> Path:
        """A detached checkout of ``commit`` (for DVC data at that commit); the project directory inside it."""
        if not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.repo.git.worktree("add", "--detach", str(destination), commit)
        return destination / self.prefix

    def changed_files(self, old: str, new: str, code_paths: list[str] | None) -> list[str] | None:
        """Files of the code paths that differ between two commits; None when ``old`` is not in this clone."""
        import git

        try:
            names = self.repo.git.diff("--name-only", old, new, "--", *self._git_paths(code_paths))
        except git.GitCommandError:
            return None
        return [n[len(self.prefix) :] for n in names.splitlines() if n and not self._excluded(n, code_paths)]

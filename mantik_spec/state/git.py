"""The git commit as the reproducibility anchor.

What counts as code is the committed tree under ``code.paths`` (default: the
project directory minus ``mantik.yaml`` and ``.mantik/``); the working
directory never runs. What a job gets is built from the same committed objects
(:meth:`ProjectRepo.export`), so the run key and the job's files cannot disagree.

Every git call goes through :func:`run_git`: git's own message reaches the user
as one line (a repository git refuses to read is never reported as a guess).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import MantikError
from ..spec.load import SPEC_FILE
from ..spec.yamlload import Problem, SpecError

STATE_DIR = ".mantik"
GIT_TIMEOUT = 300.0  # seconds; a status of a large checkout on a slow shared filesystem takes a while
# git stores only these modes in a tree (see git's fsck: "bad file mode")
FILE_MODES = {b"100644": 0o644, b"100755": 0o755}
LINK_MODE, SUBMODULE_MODE = b"120000", b"160000"
CHUNK = 1 << 20  # bytes copied at a time: the tree is streamed, never held in memory
SCRATCH_REFS = "refs/mantik/scratch/"  # one ref per scratch snapshot a run recorded: git gc keeps its objects


class GitError(MantikError):
    """A repository problem the user must fix (no commit, not a repository, git refusing it...)."""


class GitFailed(GitError):
    """A git command exited non-zero; ``returncode`` is its exit status and the message git's own."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def git_message(stderr: bytes, command: str) -> str:
    """git's message as one line: its lines joined, ``fatal:``/``error:`` dropped, the fix it suggests kept."""
    text = ""
    for line in stderr.decode("utf-8", "replace").splitlines():
        line = line.strip()
        for prefix in ("fatal: ", "error: ", "hint: "):
            line = line.removeprefix(prefix)
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return f"git {command}: {text or 'failed without a message'}"


def run_git(
    cwd: Path, *args: str, input: bytes | None = None, timeout: float = GIT_TIMEOUT, env: dict[str, str] | None = None
) -> bytes:
    """Run git in ``cwd`` and return its stdout (bytes: paths are not always UTF-8); ``env`` adds variables.

    Raises :class:`GitFailed` on a non-zero exit, :class:`GitError` when git cannot be run.
    ``core.quotePath=false``: paths in its messages stay readable (no octal escapes)."""
    command = ["git", "-c", "core.quotePath=false", *args]
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **env} if env else None,
        )
    except FileNotFoundError:
        raise GitError("git is not installed here (or not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"`git {args[0]}` did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise GitFailed(git_message(done.stderr, args[0]), done.returncode)
    return done.stdout


def _text(path: bytes) -> str:
    """A path for messages and the plan (git paths are bytes; a non-UTF-8 name must still print)."""
    return path.decode("utf-8", "replace")


@dataclass(frozen=True)
class CodeVersion:
    commit: str
    identity: str  # sha256 over the committed entries of code.paths
    branch: str | None
    repo_url: str | None
    dirty: tuple[str, ...]  # uncommitted files under code.paths, relative to the project
    lfs_pointers: tuple[str, ...] = ()  # committed files Git LFS manages: the job gets their pointers
    scratch: bool = False  # ``commit`` is a snapshot of the working tree (``--scratch``), on no branch

    def dirty_summary(self, limit: int = 10) -> str:
        return ", ".join(self.dirty[:limit]) + (
            f" and {len(self.dirty) - limit} more" if len(self.dirty) > limit else ""
        )


@dataclass(frozen=True)
class TreeEntry:
    """One ``git ls-tree -r`` line: mode, object type and id, path (bytes, relative to the listed tree)."""

    mode: bytes
    kind: bytes
    sha: str
    path: bytes

    @classmethod
    def parse(cls, record: bytes) -> TreeEntry:
        meta, path = record.split(b"\t", 1)
        mode, kind, sha = meta.split()
        return cls(mode, kind, sha.decode(), path)


def tree_entries(repository: Path, treeish: str, *paths: str) -> list[TreeEntry]:
    listing = run_git(repository, "ls-tree", "-r", "-z", "--full-tree", treeish, "--", *paths)
    return [TreeEntry.parse(record) for record in listing.split(b"\0") if record]


def _inside_a_repository(directory: Path) -> bool:
    """Whether a ``.git`` sits in ``directory`` or above: typed, not read from git's message."""
    return any((parent / ".git").exists() for parent in (directory, *directory.parents))


class ProjectRepo:
    def __init__(self, project_root: Path):
        self.project_root = Path(project_root).resolve()
        if not _inside_a_repository(self.project_root) and "GIT_DIR" not in os.environ:
            raise GitError(f"{project_root} is not inside a git repository (run `git init`)")
        # git's refusals (a checkout owned by another user: "dubious ownership") reach the user as git says them
        toplevel = run_git(self.project_root, "rev-parse", "--show-toplevel").decode().strip()
        if not toplevel:
            raise GitError(f"{project_root} is inside a bare git repository: mantik needs a checkout")
        self.root = Path(toplevel).resolve()
        prefix = self.project_root.relative_to(self.root).as_posix()
        self.prefix = "" if prefix == "." else prefix + "/"
        self.scratch: str | None = None  # a snapshot commit standing where HEAD stands (:meth:`take_snapshot`)
        self.unsnapshotted: tuple[str, ...] = ()  # changed files a snapshot left out: none of them is code

    def take_snapshot(self, code_files: list[str] | None = None) -> str | None:
        """Snapshot the project's working tree as it stands (tracked or not, minus what git ignores) as a commit
        whose parent is HEAD, and stand it where HEAD stands for this repository object: the code identity, the
        exported tree and the recorded commit are the snapshot's. The branch, the index, the working tree and
        the stash are untouched (a temporary index); the same tree on the same HEAD gives the same commit.

        ``code_files``: the project-relative paths whose content enters a run (code paths, the spec and the
        files it reads, the files pinning data); None: the whole project. None is returned, and nothing changes,
        when none of them differs from HEAD; the files that differ elsewhere are kept in ``unsnapshotted``."""
        head = self.head_commit()
        with tempfile.TemporaryDirectory(prefix="mantik-scratch-") as scratch_dir:
            index = {"GIT_INDEX_FILE": str(Path(scratch_dir) / "index")}
            run_git(self.root, "read-tree", head, env=index)
            run_git(self.root, "add", "-A", "--", self.prefix or ".", env=index)
            tree = run_git(self.root, "write-tree", env=index).decode().strip()
        if tree == run_git(self.root, "rev-parse", f"{head}^{{tree}}").decode().strip():
            return None
        if code_files is not None:
            paths = [self.prefix + p.rstrip("/") for p in code_files]
            if not run_git(self.root, "diff-tree", "-r", "-z", "--name-only", head, tree, "--", *paths):
                changed = run_git(self.root, "diff-tree", "-r", "-z", "--name-only", head, tree)
                self.unsnapshotted = tuple(_text(self._relative(p)) for p in changed.split(b"\0") if p)
                return None
        date = run_git(self.root, "log", "-1", "--format=%ct", head).decode().strip() + " +0000"
        who = {"GIT_AUTHOR_NAME": "mantik", "GIT_AUTHOR_EMAIL": "mantik@scratch", "GIT_AUTHOR_DATE": date}
        who |= {"GIT_COMMITTER_NAME": "mantik", "GIT_COMMITTER_EMAIL": "mantik@scratch", "GIT_COMMITTER_DATE": date}
        message = f"mantik scratch snapshot of the working tree on {head[:12]}\n".encode()
        self.scratch = run_git(self.root, "commit-tree", tree, "-p", head, input=message, env=who).decode().strip()
        return self.scratch

    def keep_snapshot(self) -> None:
        """Keep the snapshot under ``refs/mantik/scratch/<commit>`` so git gc keeps it while its runs matter."""
        if self.scratch:
            run_git(self.root, "update-ref", SCRATCH_REFS + self.scratch, self.scratch)

    def head_commit(self) -> str:
        if self.scratch:
            return self.scratch
        try:
            return run_git(self.root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").decode().strip()
        except GitFailed as exc:
            if exc.returncode == 1:  # --quiet: exit 1 without a message means HEAD names no commit
                raise GitError("the repository has no commit yet: commit your code first") from None
            raise

    def _git_paths(self, code_paths: list[str] | None) -> list[str]:
        if not code_paths:
            return [self.prefix or "."]
        return [self.prefix + p.rstrip("/") for p in code_paths]

    def _relative(self, path: bytes) -> bytes:
        return path[len(self.prefix.encode()) :]

    def _excluded(self, path: bytes, code_paths: list[str] | None) -> bool:
        relative = self._relative(path)
        return code_paths is None and (relative == SPEC_FILE.encode() or relative.startswith(STATE_DIR.encode() + b"/"))

    def code_version(self, code_paths: list[str] | None, also_committed: list[str] = ()) -> CodeVersion:
        """The code identity at HEAD; ``dirty`` lists uncommitted files under the code paths and in
        ``also_committed`` (the .dvc files that pin data versions).

        Raises :class:`GitError` when the job could not get this tree as committed (a submodule whose
        commit is not in this clone), so plan refuses before anything is recorded."""
        commit = self.head_commit()
        entries = [
            e
            for e in tree_entries(self.root, commit, *self._git_paths(code_paths))
            if not self._excluded(e.path, code_paths)
        ]
        if code_paths:
            self._check_paths_committed(code_paths, entries)
        self.check_shippable(commit)
        lfs_pointers = self._lfs_files(entries)
        digest = hashlib.sha256()
        for entry in entries:  # the bytes `git ls-tree -r` prints, paths relative to the project
            digest.update(entry.mode + b" " + entry.kind + b" " + entry.sha.encode() + b"\t")
            digest.update(self._relative(entry.path) + b"\n")
        return CodeVersion(
            commit=commit,
            identity=digest.hexdigest(),
            branch=self._branch(),
            repo_url=self._remote_url(),
            dirty=tuple(
                sorted(set(self.uncommitted(code_paths)) | set(self._uncommitted_extra(code_paths, also_committed)))
            ),
            lfs_pointers=lfs_pointers,
            scratch=self.scratch is not None,
        )

    def _lfs_files(self, entries: list[TreeEntry]) -> tuple[str, ...]:
        """The files whose ``filter`` attribute is ``lfs`` (from the committed .gitattributes, via the index)."""
        files = [e.path for e in entries if e.mode in FILE_MODES]
        if not files:
            return ()
        answer = run_git(
            self.root, "check-attr", "-z", "--stdin", "--cached", "filter", input=b"\0".join(files) + b"\0"
        )
        fields = answer.split(b"\0")
        return tuple(
            _text(self._relative(path))
            for path, _, value in zip(fields[0::3], fields[1::3], fields[2::3], strict=False)
            if value == b"lfs"
        )

    def _check_paths_committed(self, code_paths: list[str], entries: list[TreeEntry]) -> None:
        committed = [_text(self._relative(e.path)) for e in entries]
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

    def check_shippable(self, commit: str) -> None:
        """Refuse a tree the job could not get as committed: a submodule whose commit is not in this clone."""
        problems = _unshippable(self.root, commit, self._git_paths(None), self.prefix.encode())
        if problems:
            raise GitError(
                "the job cannot get the committed tree: "
                + "; ".join(problems)
                + " (run `git submodule update --init --recursive`, or remove the submodule from the project)"
            )

    def uncommitted(self, code_paths: list[str] | None) -> list[str]:
        if self.scratch:  # the snapshot holds the working tree as it stood
            return []
        status = run_git(
            self.root, "status", "--porcelain", "-z", "--untracked-files=all", "--", *self._git_paths(code_paths)
        )
        files = []
        records = iter(status.split(b"\0"))
        for record in records:
            if not record:
                continue
            code, path = record[:2], record[3:]  # paths are relative to the repository root
            if code[:1] in (b"R", b"C"):
                next(records, None)  # the rename's source path follows
            if path.startswith(self.prefix.encode()) and not self._excluded(path, code_paths):
                files.append(_text(self._relative(path)))
        return sorted(files)

    def _uncommitted_extra(self, code_paths: list[str] | None, paths: list[str]) -> list[str]:
        if not code_paths or not paths:
            return []  # the whole project is code: its status covers these files already
        return self.uncommitted(list(paths))

    def _branch(self) -> str | None:
        try:
            return run_git(self.root, "symbolic-ref", "--quiet", "--short", "HEAD").decode().strip() or None
        except GitFailed as exc:
            if exc.returncode == 1:  # --quiet: a detached HEAD
                return None
            raise

    def _remote_url(self) -> str | None:
        try:
            url = run_git(self.root, "config", "--get", "remote.origin.url").decode().strip()
        except GitFailed as exc:
            if exc.returncode == 1:  # no such key
                return None
            raise
        # never record a password or token that may sit in the remote URL
        import re

        return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url) or None

    def export(self, commit: str, destination: Path) -> None:
        """Write the committed project tree at ``commit`` into ``destination``, from git's objects.

        Exactly what ``git ls-tree -r`` lists: file bytes as committed (no export-ignore, export-subst,
        end-of-line or filter conversion; a Git LFS file is its committed pointer), executable bits,
        symbolic links as links whatever they point at (``/p/scratch/...``, ``../x``, nothing), and
        submodules at their recorded commit. Streamed: a large file never sits in memory."""
        self.check_shippable(commit)
        tree = f"{commit}:{self.prefix.rstrip('/')}" if self.prefix else f"{commit}^{{tree}}"
        try:
            export_tree(self.root, tree, destination)
        except BaseException as exc:
            shutil.rmtree(destination, ignore_errors=True)  # never leave half a tree that could be taken for one
            if isinstance(exc, OSError):  # a full disk or quota: one line, not a traceback
                raise GitError(f"cannot write the committed tree into {destination}: {exc.strerror or exc}") from None
            raise

    def has_commit(self, commit: str) -> bool:
        try:
            run_git(self.root, "cat-file", "-e", f"{commit}^{{commit}}")
        except GitFailed:
            return False
        return True

    def in_history(self, commit: str) -> bool:
        """Whether ``commit`` is HEAD or one of its ancestors (``git merge-base --is-ancestor``): part of what
        was checked out, not merely an object in the repository (a fetched pull request's commit is not). A
        scratch snapshot this repository keeps (``refs/mantik/scratch/<commit>``) counts when its parent does."""
        try:
            kept = run_git(self.root, "rev-parse", "--verify", "--quiet", SCRATCH_REFS + commit).decode().strip()
        except GitFailed:
            kept = ""
        if kept == commit:
            return self.in_history(f"{commit}^")
        try:
            run_git(self.root, "merge-base", "--is-ancestor", commit, self.head_commit())
        except GitFailed:
            return False
        return True

    def worktree(self, commit: str, destination: Path) -> Path:
        """A detached checkout of ``commit`` (for DVC data at that commit); the project directory inside it."""
        if not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            run_git(self.root, "worktree", "add", "--detach", str(destination), commit)
        return destination / self.prefix

    def changed_files(self, old: str, new: str, code_paths: list[str] | None) -> list[str] | None:
        """Files of the code paths that differ between two commits; None when ``old`` is not in this clone."""
        if not self.has_commit(old):
            return None
        names = run_git(self.root, "diff", "--name-only", "-z", old, new, "--", *self._git_paths(code_paths))
        return [_text(self._relative(n)) for n in names.split(b"\0") if n and not self._excluded(n, code_paths)]


def _submodule_repository(repository: Path, path: bytes, commit: str) -> Path | None:
    """The checkout of the submodule at ``path`` when it holds ``commit``; None when this clone lacks it."""
    checkout = repository / os.fsdecode(path)
    if not (checkout / ".git").exists():  # not initialised: git would answer for the superproject instead
        return None
    try:
        run_git(checkout, "cat-file", "-e", f"{commit}^{{commit}}")
    except GitFailed:
        return None
    return checkout


def _unshippable(repository: Path, treeish: str, paths: list[str], prefix: bytes) -> list[str]:
    """One phrase per submodule (nested ones too) the job could not get: its commit is not here."""
    problems = []
    for entry in tree_entries(repository, treeish, *paths):
        if entry.mode != SUBMODULE_MODE:
            continue
        shown = _text(entry.path[len(prefix) :])
        checkout = _submodule_repository(repository, entry.path, entry.sha)
        if checkout is None:
            problems.append(f"submodule {shown} (commit {entry.sha[:12]}) is not in this clone")
            continue
        problems += [f"{shown}/{p}" for p in _unshippable(checkout, entry.sha, [], b"")]
    return problems


class _Objects:
    """``git cat-file --batch``: objects streamed one at a time from one git process."""

    def __init__(self, repository: Path):
        self.repository = repository
        self.errors = tempfile.TemporaryFile()  # a pipe git could fill and block on
        try:
            self.process = subprocess.Popen(
                ["git", "cat-file", "--batch"],
                cwd=repository,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.errors,
            )
        except OSError as exc:
            self.errors.close()
            raise GitError(f"cannot run git in {repository}: {exc.strerror or exc}") from None

    def _failure(self, what: str) -> GitError:
        self.process.kill()
        self.process.wait()
        self.errors.seek(0)
        return GitFailed(git_message(self.errors.read(), f"cat-file ({what})"), self.process.returncode or 1)

    def copy(self, sha: str, sink) -> int:
        """Write blob ``sha`` into ``sink`` (a binary file or a list collecting chunks); its size."""
        try:
            self.process.stdin.write(sha.encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # git ended (a broken pipe): its message says why
            raise self._failure(f"reading {sha}") from None
        header = self.process.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            raise self._failure(f"{sha} is not a file in this repository")
        remaining = size = int(header[2])
        while remaining:
            chunk = self.process.stdout.read(min(remaining, CHUNK))
            if not chunk:
                raise self._failure(f"reading {sha} ended early")
            if isinstance(sink, list):
                sink.append(chunk)
            else:
                sink.write(chunk)
            remaining -= len(chunk)
        self.process.stdout.read(1)  # the newline after each object
        return size

    def read(self, sha: str) -> bytes:
        chunks: list[bytes] = []
        self.copy(sha, chunks)
        return b"".join(chunks)

    def close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.process.wait()
        self.errors.close()


def export_tree(repository: Path, treeish: str, destination: Path) -> None:
    """Write ``treeish`` of ``repository`` into ``destination`` (which must not hold files of the tree yet)."""
    entries = tree_entries(repository, treeish)
    destination.mkdir(parents=True, exist_ok=True)
    links, submodules = [], []
    objects = _Objects(repository)
    try:
        for entry in entries:
            target = destination / os.fsdecode(entry.path)
            if entry.mode in FILE_MODES:
                target.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                with os.fdopen(os.open(target, flags, 0o600), "wb") as handle:
                    objects.copy(entry.sha, handle)
                os.chmod(target, FILE_MODES[entry.mode])  # the umask does not decide what the job may execute
            elif entry.mode == LINK_MODE:
                links.append((target, objects.read(entry.sha)))
            elif entry.mode == SUBMODULE_MODE:
                submodules.append((target, entry))
            else:
                raise GitError(f"{_text(entry.path)}: git mode {entry.mode.decode()} is not one mantik can ship")
    finally:
        objects.close()
    # links last: no file of the tree is ever written through one of them
    for target, link in links:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.fsdecode(link), target)
    for target, entry in submodules:
        checkout = _submodule_repository(repository, entry.path, entry.sha)
        if checkout is None:
            raise GitError(
                f"submodule {_text(entry.path)} (commit {entry.sha[:12]}) is not in this clone: "
                "run `git submodule update --init --recursive`"
            )
        export_tree(checkout, f"{entry.sha}^{{tree}}", target)

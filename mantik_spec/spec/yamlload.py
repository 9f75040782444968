"""Safe YAML loading that keeps a line/column mark for every node.

PyYAML's safe loader silently keeps the last of two duplicate keys and forgets
where each value came from; this module composes the node graph itself (with
libyaml when available) so that every problem found later, semantic ones
included, can point at ``file:line:col``.

Plain (unquoted) scalars are typed by the YAML 1.2 core schema, as editors,
``check-jsonschema`` and most YAML tools of today read them, not by PyYAML's
YAML 1.1 rules: ``no``, ``yes``, ``on`` and ``off`` are text, ``1e-3`` is a
number, ``1:30:00`` is text and ``0755`` is not octal. Mapping keys are always
the text written. The written text of every plain scalar that is not text is
kept, so that a parameter declared as text gets exactly what was written, and
plain integers with leading zeros (which YAML 1.1 tools read as octal) are
remembered so that validation can ask for quotes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from ..errors import MantikError

try:  # libyaml is ~10x faster and still reports marks
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser, Composer):  # type: ignore[no-redef]
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)


STR, NULL, BOOL, INT, FLOAT = (f"tag:yaml.org,2002:{name}" for name in ("str", "null", "bool", "int", "float"))
MERGE = "tag:yaml.org,2002:merge"

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), tried in this order
CORE_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
CORE_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
CORE_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
CORE_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
# A decimal integer with a leading zero: YAML 1.1 tools (PyYAML, MLflow's MLproject reader) read 010 as 8
LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")


class _CoreResolver(yaml.resolver.BaseResolver):
    """Implicit tags of plain scalars by the YAML 1.2 core schema (PyYAML ships YAML 1.1's)."""


_CoreResolver.yaml_implicit_resolvers = {}
_CoreResolver.add_implicit_resolver(NULL, CORE_NULL, ["~", "n", "N", ""])
_CoreResolver.add_implicit_resolver(BOOL, CORE_BOOL, list("tTfF"))
_CoreResolver.add_implicit_resolver(INT, CORE_INT, list("-+0123456789"))
_CoreResolver.add_implicit_resolver(FLOAT, CORE_FLOAT, list("-+.0123456789"))
# not YAML 1.2, but `<<` gets its own refusal below rather than "unknown key"
_CoreResolver.add_implicit_resolver(MERGE, re.compile(r"^<<$"), ["<"])


class _Loader(_Parser, _CoreResolver):
    def __init__(self, stream):
        _Parser.__init__(self, stream)
        _CoreResolver.__init__(self)


def core_value(tag: str, text: str):
    """The value of a scalar of a YAML 1.2 core tag; raises ValueError when ``text`` is not of that tag."""
    if tag == NULL and CORE_NULL.match(text):
        return None
    if tag == BOOL and CORE_BOOL.match(text):
        return text.lower() == "true"
    if tag == INT and CORE_INT.match(text):
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)
    if tag == FLOAT and CORE_FLOAT.match(text):
        lowered = text.lower()
        if lowered.endswith(".nan"):
            return float("nan")
        if lowered.endswith(".inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        return float(text)
    raise ValueError(f"{text!r} is not a YAML 1.2 {tag.rsplit(':', 1)[-1]}")

Path = tuple  # a path into the document: mapping keys and list indices

# Aliases let a small file expand into a huge object graph ("billion laughs").
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 64
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
MAX_PROBLEM_CHARACTERS = 1000


def read_regular_file(path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened without blocking and checked on the open file itself, so a FIFO, a device or a
    file swapped in after a check never hangs or floods the reader. Raises ``ValueError``
    with a short reason ("is not a regular file", "is larger than N bytes") or ``OSError``.
    """
    import os
    import stat

    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"is larger than {_size(limit)}")
        chunks, total = [], 0
        while chunk := os.read(descriptor, 1 << 20):  # the size may grow while it is read
            total += len(chunk)
            if total > limit:
                raise ValueError(f"is larger than {_size(limit)}")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based, as editors show it
    column: int  # 1-based


@dataclass
class Problem:
    """One user-facing problem, located in a file."""

    file: str
    mark: Mark | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.mark is not None:
            where += f":{self.mark.line}:{self.mark.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        # one line per problem, whatever a key or value holds: control characters are shown escaped
        text = CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)
        # and of a size a terminal shows (a message may quote a value of megabytes)
        return text if len(text) <= MAX_PROBLEM_CHARACTERS else text[: MAX_PROBLEM_CHARACTERS - 3] + "..."


class SpecError(MantikError):
    """Raised with every problem found, so the user can fix them in one go: one ``file:line`` line each."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems

    def lines(self) -> list[str]:
        return [str(problem) for problem in self.problems]


@dataclass
class MarkedDocument:
    """Plain Python data plus a mark for every key and value path."""

    file: str
    data: object
    marks: dict[Path, object] = field(default_factory=dict)  # where each value starts (libyaml marks)
    key_marks: dict[Path, object] = field(default_factory=dict)  # where each mapping key starts
    written: dict[Path, str] = field(default_factory=dict)  # text of each plain scalar that is not a string
    leading_zeros: set[Path] = field(default_factory=set)  # plain integers written with a leading zero (010)

    def mark_for(self, path: Path, at_key: bool = False) -> Mark | None:
        """The mark of ``path`` (its key or its value) or of its nearest ancestor that exists."""
        path = tuple(path)
        # a problem with a whole mapping or list (an entry point, a parameter) is shown at its name
        if path in self.key_marks and (at_key or isinstance(self._value_at(path), (dict, list))):
            return _from_yaml(self.key_marks[path])
        while path:
            if path in self.marks:
                return _from_yaml(self.marks[path])
            path = path[:-1]
        return _from_yaml(self.marks[()]) if () in self.marks else None

    def locate(self, path: Path) -> tuple[MarkedDocument, Path]:
        """The file a value was written in and its path there (here: always this file)."""
        return self, tuple(path)

    def _value_at(self, path: Path):
        node = self.data
        for part in path:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    def problem(self, path: Path, message: str, at_key: bool = False) -> Problem:
        """A problem about the value at ``path``, or about the key itself."""
        return Problem(self.file, self.mark_for(path, at_key), dotted(path), message)


def dotted(path: Path) -> str:
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts)


def _mark(node: yaml.Node) -> Mark:
    return _from_yaml(node.start_mark)


def _from_yaml(mark) -> Mark:
    return Mark(mark.line + 1, mark.column + 1)


class _Builder:
    """Walks the composed node graph into plain data, remembering where every value and key starts.

    Marks are kept as libyaml's own mark objects and turned into :class:`Mark`
    only for the few paths a problem is reported at.
    """

    def __init__(self, file: str, has_anchors: bool):
        self.file = file
        self.marks: dict[Path, object] = {}
        self.key_marks: dict[Path, object] = {}
        self.problems: list[Problem] = []
        self.written: dict[Path, str] = {}
        self.leading_zeros: set[Path] = set()
        self.constructor = yaml.SafeLoader("")  # only for explicitly tagged scalars outside the core schema
        self.has_anchors = has_anchors  # without anchors there are no aliases, so no cycles to guard
        self.visiting: set[int] = set()

    def build(self, node: yaml.Node, path: Path, depth: int = 0):
        self.marks[path] = node.start_mark
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if depth > MAX_DEPTH:
            self._fail(node, path, f"nesting deeper than {MAX_DEPTH} levels")
            return None
        if self.has_anchors:
            if id(node) in self.visiting:
                self._fail(node, path, "recursive alias")
                return None
            self.visiting.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, (*path, i), depth + 1) for i, child in enumerate(node.value)]
            return self._mapping(node, path, depth)
        finally:
            self.visiting.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: Path):
        if "\x00" in node.value:  # "\0" in a quoted string: no command line, variable or file name can hold it
            self._fail(node, path, "contains a NUL character (\\0), which no program can receive")
            return None
        if node.tag == STR:
            return node.value
        if node.tag in (NULL, BOOL, INT, FLOAT):
            try:
                value = core_value(node.tag, node.value)
            except ValueError as exc:  # an explicit tag on a value of another kind (!!int abc)
                self._fail(node, path, str(exc))
                return None
            if not node.style:  # plain (libyaml: "", PyYAML: None): the text written is kept too
                self.written[path] = node.value
                if node.tag == INT and LEADING_ZERO.match(node.value):
                    self.leading_zeros.add(path)
            return value
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._fail(node, path, _first_line(exc))
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                self._fail(key_node, path, "YAML merge keys (<<) are not supported; use `extends`")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, path, "mapping keys must be plain scalars")
                continue
            if key_node.tag == NULL and not key_node.style:
                self._fail(key_node, path, "mapping keys must not be empty (null)")
                continue
            key = key_node.value  # keys are names: the text written (010: stays "010", true: stays "true")
            if "\x00" in key:
                self._fail(key_node, path, "a key contains a NUL character (\\0)")
                continue
            child = (*path, key)
            if key in result:
                first = self.key_marks[child]
                self._fail(key_node, child, f"duplicate key '{key}' (first defined at line {first.line + 1})")
                continue
            self.key_marks[child] = key_node.start_mark
            result[key] = self.build(value_node, child, depth + 1)
        return result

    def _fail(self, node: yaml.Node, path: Path, message: str) -> None:
        self.problems.append(Problem(self.file, _mark(node), dotted(path), message))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_marked(text: str, file: str) -> MarkedDocument:
    """Parse ``text`` into a :class:`MarkedDocument` or raise :class:`SpecError`."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        has_anchors = "&" in text  # an alias needs an anchor: without one the graph is a tree
        if root is not None and has_anchors:
            _check_expanded_size(root, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError([Problem(file, where, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(file, None, "", f"YAML error: {_first_line(exc)}")]) from None
    finally:
        loader.dispose()
    if root is None:
        raise SpecError([Problem(file, Mark(1, 1), "", "the file is empty")])
    builder = _Builder(file, has_anchors)
    data = builder.build(root, ())
    if builder.problems:
        raise SpecError(builder.problems)
    return MarkedDocument(file, data, builder.marks, builder.key_marks, builder.written, builder.leading_zeros)


def _check_expanded_size(root, file: str) -> None:
    """Refuse documents whose aliases expand into a huge object graph ("billion laughs").

    The size of a node once its aliases are expanded is computed over the node
    graph (shared nodes once), so the check itself stays cheap.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # nodes whose children are being sized: reaching one again is a loop
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:  # &a [*a]: an alias inside its own anchor never ends
                raise SpecError([Problem(file, _mark(node), "", "recursive alias (a node contains itself)")])
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        size = 1 + sum(sizes.get(id(child), 1) for child in children)
        if size > MAX_EXPANDED_NODES:
            raise SpecError(
                [Problem(file, _mark(node), "", f"aliases expand to more than {MAX_EXPANDED_NODES} values")]
            )
        sizes[id(node)] = size


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []

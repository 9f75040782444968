"""Safe YAML loading that keeps a line/column mark for every node.

PyYAML's safe loader silently keeps the last of two duplicate keys and forgets
where each value came from; this module composes the node graph itself (with
libyaml when available) so that every problem found later, semantic ones
included, can point at ``file:line:col``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

try:  # libyaml is ~10x faster and still reports marks
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeLoader as _Loader

Path = tuple  # a path into the document: mapping keys and list indices

# Aliases let a small file expand into a huge object graph ("billion laughs").
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 64
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


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
        return CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)


class SpecError(Exception):
    """Raised with every problem found, so the user can fix them in one go."""

    def __init__(self, problems: list[Problem]):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class MarkedDocument:
    """Plain Python data plus a mark for every key and value path."""

    file: str
    data: object
    marks: dict[Path, object] = field(default_factory=dict)  # where each value starts (libyaml marks)
    key_marks: dict[Path, object] = field(default_factory=dict)  # where each mapping key starts

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
        self.constructor = yaml.SafeLoader("")  # only for scalar resolution
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
        if node.tag == "tag:yaml.org,2002:str":
            return node.value
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self._fail(node, path, _first_line(exc))
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._fail(key_node, path, "YAML merge keys (<<) are not supported; use `extends`")
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._fail(key_node, path, "mapping keys must be plain scalars")
                continue
            key = self._scalar(key_node, path)
            if key is None:
                self._fail(key_node, path, "mapping keys must not be empty (null)")
                continue
            if not isinstance(key, str):
                key = str(key).lower() if isinstance(key, bool) else str(key)
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
    return MarkedDocument(file, data, builder.marks, builder.key_marks)


def _check_expanded_size(root, file: str) -> None:
    """Refuse documents whose aliases expand into a huge object graph ("billion laughs").

    The size of a node once its aliases are expanded is computed over the node
    graph (shared nodes once), so the check itself stays cheap.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
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

"""Reading the profile file within bounds: size, nesting, alias expansion.

A profile file is trusted more than a request, but it arrives by a ConfigMap or a shared
volume, and one bad edit (or one hostile one) must be refused, not applied or left to wedge
the process. PyYAML shares an aliased node instead of copying it, so ``yaml.safe_load`` of a
"billion laughs" file is cheap; the cost comes later, when pydantic, ``model_dump`` and the
JSON encoder walk the expanded tree (10^9 leaves: gigabytes, minutes, once per request).
So the bounds are checked on the *composed* node graph, before any Python object is built:

* the file: at most :data:`MAX_PROFILE_BYTES` bytes, a regular file, UTF-8;
* nesting: at most :data:`MAX_DEPTH` levels, counted while composing (PyYAML's composer
  recurses, so 3000 ``[`` would otherwise end in a ``RecursionError``) and again with
  aliases expanded;
* expansion: at most :data:`MAX_NODES` nodes and :data:`MAX_SCALAR_CHARS` characters of
  scalars with every alias counted at its full size (a memoised walk: linear in the file);
* no recursive aliases (``&a [*a]``).

Every refusal is a :class:`ProfileError` naming the bound and where it was crossed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ProfileError

#: largest profile file read (bytes); real ones are a few KiB
MAX_PROFILE_BYTES = 1024 * 1024
#: deepest nesting of mappings and sequences, aliases expanded
MAX_DEPTH = 64
#: most nodes (scalars, sequences, mappings), aliases counted at their full size
MAX_NODES = 100_000
#: most characters of scalar text, aliases counted at their full size
MAX_SCALAR_CHARS = 2 * MAX_PROFILE_BYTES


def _where(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` whose composer refuses nesting beyond :data:`MAX_DEPTH` and more
    than :data:`MAX_NODES` composed nodes, before it recurses or allocates further."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        self._composed += 1
        try:
            if self._depth > MAX_DEPTH or self._composed > MAX_NODES:
                where = _where(self.peek_event())  # type: ignore[no-untyped-call]
                if self._depth > MAX_DEPTH:
                    raise ProfileError([f"nested deeper than {MAX_DEPTH} levels{where}"])
                raise ProfileError([f"more than {MAX_NODES} YAML nodes{where}"])
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_expansion(root: Node) -> None:
    """Refuse a composed document whose alias-expanded size or depth is over the bounds,
    or that refers to itself. Iterative and memoised by node: linear in the file."""
    # id(node) -> (nodes, scalar chars, depth) of the node with its aliases expanded
    done: dict[int, tuple[int, int, int]] = {}
    entered: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if isinstance(node, ScalarNode):
            done[key] = (1, len(node.value), 0)
            continue
        children: list[Node]
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        else:  # pragma: no cover - the composer makes only these three
            raise ProfileError([f"unexpected YAML node {type(node).__name__}"])
        if finished:
            nodes, chars, depth = 1, 0, 0
            for child in children:
                n, c, d = done[id(child)]
                nodes, chars, depth = nodes + n, chars + c, max(depth, d)
            depth += 1
            entered.discard(key)
            done[key] = (nodes, chars, depth)
            if nodes > MAX_NODES:
                raise ProfileError(
                    [
                        f"aliases expand to more than {MAX_NODES} YAML nodes{_where(node)} "
                        "(an alias bomb?)"
                    ]
                )
            if chars > MAX_SCALAR_CHARS:
                raise ProfileError(
                    [f"aliases expand to more than {MAX_SCALAR_CHARS} characters{_where(node)}"]
                )
            if depth > MAX_DEPTH:
                raise ProfileError(
                    [f"aliases expand to a nesting deeper than {MAX_DEPTH} levels{_where(node)}"]
                )
            continue
        if key in done:
            continue
        if key in entered:  # met again inside its own subtree
            raise ProfileError([f"a recursive alias{_where(node)}"])
        entered.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in done)


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` within the bounds above. Raises :class:`ProfileError` for any
    problem, a malformed scalar included (``int()`` of 5000 digits raises ``ValueError``)."""
    if len(text) > MAX_PROFILE_BYTES or len(text.encode()) > MAX_PROFILE_BYTES:
        raise ProfileError([f"{source}: larger than {MAX_PROFILE_BYTES} bytes"])
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    except ProfileError as exc:
        raise ProfileError([f"{source}: {e}" for e in exc.errors]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError([f"{source}: invalid YAML{_where(mark)}: {problem}"]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # a scalar the constructor cannot turn into a value (a 5000-digit int, 2024-13-45)
        raise ProfileError([f"{source}: invalid YAML value: {_short(exc)}"]) from None
    finally:
        loader.dispose()


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def read_profile_text(path: str | Path) -> str:
    """The profile file's text: a regular file of at most :data:`MAX_PROFILE_BYTES` bytes
    of UTF-8, else :class:`ProfileError`."""
    return read_bounded_text(path, MAX_PROFILE_BYTES, "{path}: cannot read profile file: {why}")


def read_bounded_text(path: str | Path, limit: int, message: str) -> str:
    """A regular file's UTF-8 text, refused (``message`` formatted with ``path`` and
    ``why``) when it is larger than ``limit`` bytes; never more than that is read, and a
    FIFO or a device is not read at all."""
    p = Path(path)

    def refuse(why: object) -> ProfileError:
        return ProfileError([message.format(path=p, why=why)])

    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise refuse(exc.strerror or exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refuse("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise refuse(exc.strerror or exc) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise refuse(f"larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"not UTF-8 ({exc.reason})") from None

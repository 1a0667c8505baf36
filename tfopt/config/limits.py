"""Limits on what a recipe may ask for, and the YAML reader that enforces them.

A recipe is user input: it may be huge, deeply nested, full of aliases that expand to
billions of nodes, or simply not text. Everything here refuses such input at once, with a
message that names the limit, before anything is built or trained. Imports no TensorFlow.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

MAX_RECIPE_BYTES = 128 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_LAYERS = 1_000
MAX_CHOICES = 1_000
MAX_INT = 2**31 - 1
MAX_SEED = 2**32 - 1

LIMITS = {
    "recipe file size": f"{MAX_RECIPE_BYTES // 1024} KiB",
    "nesting depth": f"{MAX_DEPTH} levels",
    "YAML nodes after alias expansion": f"{MAX_NODES:,}",
    "layers after repeat": f"{MAX_LAYERS:,}",
    "values in one tune choice": f"{MAX_CHOICES:,}",
    "integers": f"{MAX_INT:,} (seeds: {MAX_SEED:,})",
}


class YamlLimitError(ValueError):
    """The YAML text breaks one of the limits above; the message names it."""


_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE):
    """The safe loader (libyaml's when present) with a duplicate-key check."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark) from None
            if key in seen:
                raise YamlLimitError(f"the key '{key}' appears twice in one mapping (lines {seen[key] + 1} and "
                                     f"{key_node.start_mark.line + 1}); the later one would silently replace the "
                                     f"earlier, so give each key once")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root) -> int:
    """Nodes in the tree the composed graph stands for, counting every alias use in full.

    Composing never follows an alias, so a recursive one (``a: &x [*x]``) is a cycle in the
    graph; it is found here, before anything walks the data recursively.
    """
    memo: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            memo[id(node)] = 1
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if done:
            open_.discard(id(node))
            memo[id(node)] = min(1 + sum(memo[id(c)] for c in children), MAX_NODES + 1)
            continue
        if id(node) in memo:
            continue
        open_.add(id(node))
        stack.append((node, True))
        for c in children:
            if id(c) in open_:
                raise YamlLimitError(f"an alias at line {c.start_mark.line + 1} refers to a node that contains "
                                     f"it (a recursive alias); a recipe cannot contain itself")
            if id(c) not in memo:
                stack.append((c, False))
    return memo[id(root)]


def _check_depth(text: str) -> None:
    """Refuse deep nesting from the event stream, before the recursive composer sees it."""
    depth = 0
    for event in yaml.parse(text, Loader=_BASE):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise YamlLimitError(f"nesting deeper than {MAX_DEPTH} levels at line {mark.line + 1}, column "
                                     f"{mark.column + 1} (limit: nesting depth {MAX_DEPTH})")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def load_yaml(text: str):
    """Parse YAML text within the limits; raises :class:`YamlLimitError` or ``yaml.YAMLError``."""
    _check_depth(text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_NODES:
            raise YamlLimitError(f"the YAML stands for more than {MAX_NODES:,} values once its aliases are "
                                 f"expanded (limit: YAML nodes after alias expansion {MAX_NODES:,}); "
                                 f"a recipe needs far fewer")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_text(path) -> str:
    """The text of a recipe file, refused when it is not a regular UTF-8 file within the size limit.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        YamlLimitError: anything else that makes it unusable, with the reason.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise YamlLimitError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise YamlLimitError("is a folder, not a recipe file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise YamlLimitError(f"is {kind}, not a recipe file; give the path of a .yaml file")
    kind = model_file_kind(p)
    if kind is not None:
        raise YamlLimitError(f"is {kind}, not a recipe; a recipe is a YAML text file (tfopt recipes lists the "
                             f"bundled ones). A command that takes a model takes this file as its RUN argument")
    if st.st_size > MAX_RECIPE_BYTES:
        raise YamlLimitError(f"is {st.st_size:,} bytes, over the {MAX_RECIPE_BYTES // 1024} KiB limit on recipe "
                             f"files (limit: recipe file size); a recipe is a few KiB")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise YamlLimitError(f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise YamlLimitError(f"is over the {MAX_RECIPE_BYTES // 1024} KiB limit on recipe files "
                             f"(limit: recipe file size)")
    return decode(raw)


def sniff(head: bytes):
    """What the first bytes of a file say it is, for the model files tfopt meets; None for anything else.

    Example:
        >>> sniff(b"PK\\x03\\x04rest")
        'a Keras model file (a .keras zip archive)'
    """
    if head.startswith(b"PK\x03\x04"):
        return "a Keras model file (a .keras zip archive)"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 model file (.h5)"
    if head[4:8] == b"TFL3":
        return "a TFLite model (.tflite)"
    return None


def model_file_kind(path):
    """:func:`sniff` of a regular file's first bytes; None when it cannot be read or is none of those."""
    try:
        with open(path, "rb") as fh:
            return sniff(fh.read(8))
    except OSError:
        return None


def decode(raw: bytes) -> str:
    """UTF-8 text from bytes, or a :class:`YamlLimitError` saying what the bytes look like."""
    if raw.startswith(b"\x89PNG") or raw.startswith(b"\xff\xd8\xff") or raw.startswith(b"GIF8"):
        raise YamlLimitError("is an image, not a YAML recipe")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise YamlLimitError("is UTF-16 text; save the recipe as UTF-8")
    if b"\x00" in raw:
        raise YamlLimitError(f"holds a NUL byte at offset {raw.index(bytes(1))}: it is binary, not a YAML recipe "
                             f"(save it as UTF-8 text)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YamlLimitError(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, offset {exc.start}); "
                             f"save the recipe as UTF-8") from None

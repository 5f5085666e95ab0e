"""One loader for every kind of spec: folders of YAML files read into checked, frozen dataclasses.

A kind (models, applications, released erasers) is a `SpecKind`: the folder shipped inside the
package, the environment variable that adds a user's folders (os.pathsep-separated) and a parse
function from one file's mapping to its dataclass. `load` reads every `*.yaml`/`*.yml` file of each
folder and of its subfolders one level down (e.g. one per world), refuses a name used twice and
raises a one-line SpecError naming the file: `path:line:col: problem` for YAML syntax,
`path: field ...` for fields.
"""

from __future__ import annotations

import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from spmbench.registry import Registry


T = TypeVar("T")
SUFFIXES = (".yaml", ".yml")


class SpecError(ValueError):
    """A spec file is malformed; the message names the file and what to fix."""


@dataclass(frozen=True)
class SpecKind(Generic[T]):
    """A kind of spec: where its files are and how one file becomes a spec (with a `name`)."""

    kind: str  # "model", "application", "eraser": the word messages and the registry use
    shipped: Path  # the folder inside the package
    env: str  # the environment variable naming the user's folders
    parse: Callable[[Any, str], T]  # (the file's YAML data, its path) -> spec; raises SpecError

    def folders(self) -> list[Path]:
        extra = [Path(p).expanduser() for p in os.environ.get(self.env, "").split(os.pathsep) if p]
        for folder in extra:
            if not folder.is_dir():
                raise SpecError(f"{self.env}: {folder} is not a folder (give folders of {self.kind} YAML files)")
        return [self.shipped, *extra]


def load(kind: SpecKind[T], folders: list[Path] | None = None) -> Registry[T]:
    """Every spec of `kind` in `folders` (default: the shipped folder, then the user's), by name."""
    registry: Registry[T] = Registry(kind.kind)
    origins: dict[str, Path] = {}
    for folder in dict.fromkeys(kind.folders() if folders is None else folders):  # a folder named twice: once
        for path in spec_files(Path(folder)):
            spec = kind.parse(read_yaml(path), str(path))
            name = spec.name  # type: ignore[attr-defined]
            if name in origins:
                raise SpecError(f"{path}: {kind.kind} name {name!r} is also used by {origins[name]}")
            origins[name] = path
            registry.add(name, spec)
    return registry


def spec_files(folder: Path) -> list[Path]:
    """The YAML files of `folder` and of its subfolders one level down, in a stable order."""
    candidates = [*folder.glob("*"), *folder.glob("*/*")]
    return sorted(p for p in candidates if p.suffix in SUFFIXES and p.is_file())


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # a reader error spans lines
        raise SpecError(f"{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot be read: {e}") from None


def build(cls: type[T], data: Any, origin: str, /, **computed: Any) -> T:
    """A `cls` from a file's mapping: its fields are the dataclass's, less those in `computed` (e.g. origin)."""
    hints = typing.get_type_hints(cls)
    settable = [f for f in fields(cls) if f.name not in computed]  # type: ignore[arg-type]
    schema = {f.name: hints[f.name] for f in settable}
    required = {f.name for f in settable if f.default is MISSING and f.default_factory is MISSING}
    return cls(**check_fields(data, schema, required, origin), **computed)


def check_fields(data: Any, schema: dict[str, Any], required: set[str], origin: str, where: str = "") -> dict:
    """`data`'s fields: all known, the required ones present, each of its type (a list becomes a tuple
    where a tuple is wanted). `where` prefixes field names in messages (e.g. 'prompts.target.')."""
    if not isinstance(data, dict):
        what = f"{where.rstrip('.')} must be" if where else "expected"
        raise SpecError(f"{origin}: {what} a mapping of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise SpecError(f"{origin}: unknown field(s) {[where + u for u in unknown]}; allowed: {sorted(schema)}")
    missing = sorted(required - set(data))
    if missing:
        raise SpecError(f"{origin}: missing field(s) {[where + m for m in missing]}")
    out = {}
    for name, value in data.items():
        try:
            out[name] = conform(value, schema[name])
        except _Mismatch:
            raise SpecError(
                f"{origin}: {where}{name} must be {type_name(schema[name])}, got {value!r}"[:300]
            ) from None
    return out


class _Mismatch(Exception):
    pass


def conform(value: Any, hint: Any) -> Any:
    """`value` as the type hint wants it (YAML lists become tuples where tuples are wanted), or _Mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return conform(value, option)
            except _Mismatch:
                pass
        raise _Mismatch
    if hint is Any:
        return value
    if hint in (int, float):  # YAML's true/false are not numbers; a whole number is a number
        if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
            raise _Mismatch
        if hint is float and abs(value) > sys.float_info.max:  # a whole number beyond every float
            raise _Mismatch
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        items = [conform(v, args[0]) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return {conform(k, args[0]): conform(v, args[1]) for k, v in value.items()}
    if not isinstance(value, origin or hint):
        raise _Mismatch
    return value


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(h) for h in args)
    if origin in (tuple, list) and args:
        return f"a list of {_plural(type_name(args[0]))}"
    if origin is dict and args:
        return f"a mapping of {_plural(type_name(args[0]))} to {_plural(type_name(args[1]))}"
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false", type(None): "null",
             dict: "a mapping", list: "a list", tuple: "a list"}  # fmt: skip
    return names.get(origin or hint, str(hint))


def _plural(name: str) -> str:
    if name.startswith("a list"):
        return "lists" + name[len("a list") :]
    if name.startswith(("a mapping", "a whole number", "a number")):
        return name[2:] + "s"
    return name

"""The one config loader of every mugv command line: YAML file -> overrides -> typed config.

Precedence: ``--set key.path=value`` > the YAML file > the model's defaults. A key path is
dotted; a numeric part indexes a list (``curriculum.0.steps=5``); a value is read as YAML
(``3`` is an int, ``null`` is None, ``[1, 2]`` a list, ``''`` or nothing the empty string)
and coerced by the pydantic model. Every failure is a :class:`ConfigError` (a ``ValueError``)
whose message is one line naming the file, the field and the value::

    from mugv_formats.config_loading import load_config
    cfg = load_config(RunConfig, "run.yaml", ["train.seed=3", "curriculum.0.steps=5"])

No torch here (mugv-formats' rule): any package may import it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = [
    "MAX_YAML_ALIASES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "ConfigError",
    "BoundedSafeLoader",
    "safe_load_bounded",
    "apply_overrides",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml_mapping",
    "validation_message",
]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be loaded; ``str()`` is one line naming file, field and value."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


#: Bounds of every YAML document a mugv command reads (configs, --set values, energon
#: metadata): a config is a few kB; these stop alias bombs ("billion laughs"), deeply nested
#: flow collections and huge files before they cost time or memory.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 1000
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 200_000  # nodes after expanding every alias (what the constructor builds)


class YAMLBoundsError(ValueError):
    """A YAML document over one of the bounds above."""


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, while composing, more than :data:`MAX_YAML_ALIASES`
    alias uses, nesting deeper than :data:`MAX_YAML_DEPTH`, or a document that would expand
    to more than :data:`MAX_YAML_NODES` nodes (each alias counts the whole subtree it names,
    so an alias bomb is refused before anything is built)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded node count of its subtree

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YAMLBoundsError(f"more than {MAX_YAML_ALIASES} aliases")
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YAMLBoundsError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._size(node)
        if size > MAX_YAML_NODES:
            raise YAMLBoundsError(f"expands to more than {MAX_YAML_NODES} nodes (alias bomb?)")
        return node

    def _size(self, node: Any) -> int:
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(
                self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value
            )
        else:
            size = 1
        self._sizes[id(node)] = size
        return size


def safe_load_bounded(text: str | bytes, where: str | Path = "<string>") -> Any:
    """``yaml.safe_load`` within the bounds above. A document over a bound is a
    :class:`ConfigError` naming ``where`` and the bound; a syntax error stays a
    ``yaml.YAMLError`` for the caller to word."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_YAML_BYTES} bytes; not a mugv YAML file")
    loader = BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    except YAMLBoundsError as e:
        raise ConfigError(f"{where}: YAML refused: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML refused: nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], value read as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: must look like key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"--set {item!r}: empty part in key {key.strip()!r}")
    parts = [p.strip() for p in parts]
    if not raw.strip():
        return parts, ""
    try:
        return parts, safe_load_bounded(raw, f"--set {item!r}")
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not YAML ({_one_line(e)})") from None


def _list_index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {item!r}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``raw`` with each ``key.path=value`` set; missing sections are created, a
    numeric part indexes an existing list item. Unknown keys are left for the model to refuse."""
    out = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, item)]
            elif part not in node and parts[depth + 1].isdigit():
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"--set {item!r}: {where} is not in the config; write the list in the "
                    "config file to set one of its items"
                )
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {where} is {node!r}, not a section or a list")
        if isinstance(node, list):
            node[_list_index(node, parts[-1], item)] = value
        else:
            node[parts[-1]] = value
    return out


def _set_flags(raw: dict, flags: dict[str, Any]) -> dict:
    out = copy.deepcopy(raw)
    for key, value in flags.items():
        if value is None:
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"flag {key}: {part!r} is set to a value, not a section")
        node[parts[-1]] = value
    return out


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping a YAML file holds (an empty file is ``{}``); ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"{what} {path} {state}")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_YAML_BYTES + 1)
        if len(text) > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path}: larger than {MAX_YAML_BYTES} bytes; refused")
        data = safe_load_bounded(text.decode("utf-8"), f"{what} {path}")
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: not valid YAML ({_one_line(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read ({_one_line(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validation_message(err: ValidationError, source: str | Path | None = None) -> str:
    """One line: ``SOURCE: FIELD = VALUE: MESSAGE; ...`` for each invalid field."""
    items = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        items.append(f"{_loc(e['loc'])}{shown}: {msg}")
    head = f"config file {source}" if source is not None else "config"
    return _one_line(f"{head}: " + "; ".join(items))


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Iterable[str] | None = (),
    *,
    base: dict | None = None,
    flags: dict[str, Any] | None = None,
    build: Callable[[dict], M] | None = None,
) -> M:
    """``base`` (packaged defaults) < the YAML at ``path`` < ``flags`` (a command's own
    options, dotted key -> value, None = not given) < ``overrides``, validated by ``model``
    (or by ``build(raw)``, e.g. to expand a preset first). ``base`` is merged with the file
    key by key, sections recursively."""
    raw = copy.deepcopy(base) if base else {}
    if path is not None:
        raw = _merge(raw, read_yaml_mapping(path))
    raw = apply_overrides(_set_flags(raw, flags or {}), overrides or ())
    try:
        return build(raw) if build is not None else model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(validation_message(e, path)) from None
    except ConfigError:
        raise
    except ValueError as e:  # a build step's own check (e.g. an unknown preset)
        head = f"config file {path}" if path is not None else "config"
        raise ConfigError(_one_line(f"{head}: {e}")) from None


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _merge(out[k], v) if both else v
    return out


def dump_config(config: BaseModel) -> str:
    """YAML text of a resolved config (what each run's ``resolved_config.yaml`` holds)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

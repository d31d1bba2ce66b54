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
    "ConfigError",
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
        return parts, yaml.safe_load(raw)
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
        data = yaml.safe_load(path.read_text())
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

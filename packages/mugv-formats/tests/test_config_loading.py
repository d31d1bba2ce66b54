"""The shared config loader: YAML -> overrides -> typed model, one-line errors."""

from __future__ import annotations

import pytest
from mugv_formats.config_loading import (
    ConfigError,
    apply_overrides,
    dump_config,
    load_config,
    parse_override,
    read_yaml_mapping,
)
from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")


class Stage(BaseModel):
    model_config = _STRICT
    name: str
    steps: int = Field(..., gt=0)
    lr: float = 1e-4


class Train(BaseModel):
    model_config = _STRICT
    seed: int = 42
    bf16: bool = True
    peak: float | None = None
    tags: list[str] = Field(default_factory=list)


class Run(BaseModel):
    model_config = _STRICT
    train: Train = Field(default_factory=Train)
    curriculum: list[Stage] = Field(default_factory=lambda: [Stage(name="main", steps=10)])
    output_dir: str = "runs/x"


def _yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_file_then_overrides_with_nested_keys_and_list_indices(tmp_path):
    path = _yaml(
        tmp_path,
        "train: {seed: 1}\ncurriculum:\n  - {name: a, steps: 3}\n  - {name: b, steps: 4}\n",
    )
    cfg = load_config(Run, path, ["train.seed=7", "curriculum.1.steps=5", "curriculum.0.lr=0.5"])
    assert cfg.train.seed == 7
    assert [(s.name, s.steps, s.lr) for s in cfg.curriculum] == [("a", 3, 0.5), ("b", 5, 1e-4)]
    assert cfg.output_dir == "runs/x"  # default kept


def test_values_are_yaml_and_coerced_by_the_model(tmp_path):
    cfg = load_config(
        Run,
        None,
        ["train.seed='12'", "train.bf16=false", "train.peak=null", "train.tags=[a, b]",
         "output_dir="],
    )  # fmt: skip
    assert cfg.train.seed == 12 and isinstance(cfg.train.seed, int)
    assert cfg.train.bf16 is False and cfg.train.peak is None
    assert cfg.train.tags == ["a", "b"] and cfg.output_dir == ""
    assert load_config(Run, None, ["train.peak=989"]).train.peak == 989.0


def test_override_creates_missing_sections_and_does_not_touch_its_input():
    raw = {"train": {"seed": 1}}
    out = apply_overrides(raw, ["a.b.c=1", "train.seed=2"])
    assert out == {"train": {"seed": 2}, "a": {"b": {"c": 1}}}
    assert raw == {"train": {"seed": 1}}


def test_base_is_merged_below_the_file_section_by_section(tmp_path):
    path = _yaml(tmp_path, "train: {seed: 3}\n")
    cfg = load_config(Run, path, [], base={"train": {"bf16": False, "seed": 1}})
    assert (cfg.train.seed, cfg.train.bf16) == (3, False)


_BASE = {"output_dir": "runs/x", "curriculum": [{"name": "a", "steps": 1}]}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("curriculum.2.steps=5", "'2' is not an index of a 1-item list"),
        ("curriculum.x.steps=5", "'x' is not an index"),
        ("output_dir.sub=1", "output_dir is 'runs/x', not a section"),
        ("train.seed", "must look like key.path=value"),
        ("train..seed=1", "empty part"),
        ("train.seed=[1", "value is not YAML"),
        ("stages.0.steps=1", "stages is not in the config; write the list"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_item(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(Run, None, [override], base=_BASE)
    msg = str(info.value)
    assert needle in msg and override.split("=")[0] in msg and "\n" not in msg


def test_unknown_key_and_bad_value_name_file_field_and_value(tmp_path):
    path = _yaml(tmp_path, "train: {sede: 1}\ncurriculum: [{name: a, steps: 2}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(Run, path)
    msg = str(info.value)
    assert str(path) in msg and "train.sede = 1" in msg and "Extra inputs" in msg
    assert "\n" not in msg

    with pytest.raises(ConfigError) as info:
        load_config(Run, path, ["train.sede=null", "curriculum.0.steps=0"])
    msg = str(info.value)
    assert "curriculum.0.steps = 0" in msg and "greater than 0" in msg
    with pytest.raises(ConfigError, match=r"train\.seed = 'abc'"):
        load_config(Run, None, ["train.seed=abc"])


@pytest.mark.parametrize(
    ("text", "needle"),
    [("train: [1\n", "not valid YAML"), ("- 1\n- 2\n", "top level must be a mapping, got list")],
)
def test_bad_yaml_files(tmp_path, text, needle):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Run, path)
    assert needle in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_directory_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml_mapping(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_yaml_mapping(tmp_path)
    assert load_config(Run, _yaml(tmp_path, "")).train.seed == 42


def test_build_hook_and_its_value_errors_name_the_file(tmp_path):
    path = _yaml(tmp_path, "preset: huge\n")

    def build(raw):
        if raw.pop("preset", None) == "huge":
            raise ValueError("preset 'huge' unknown")
        return Run.model_validate(raw)

    with pytest.raises(ConfigError, match=rf"config file {path}: preset 'huge' unknown"):
        load_config(Run, path, build=build)
    assert load_config(Run, None, ["train.seed=5"], build=build).train.seed == 5


def test_parse_override_and_dump_round_trip():
    assert parse_override("a.0.b= 3 ") == (["a", "0", "b"], 3)
    cfg = load_config(Run, None, ["curriculum.0.steps=9"], base=_BASE)
    assert load_config(Run, None, base=__import__("yaml").safe_load(dump_config(cfg))) == cfg


def test_flags_sit_between_the_file_and_the_overrides(tmp_path):
    path = _yaml(tmp_path, "train: {seed: 3, bf16: false}\noutput_dir: a\n")
    flags = {"train.seed": 4, "output_dir": None, "train.peak": 1.5}
    cfg = load_config(Run, path, [], flags=flags)
    assert (cfg.train.seed, cfg.train.bf16, cfg.output_dir, cfg.train.peak) == (4, False, "a", 1.5)
    assert load_config(Run, path, ["train.seed=5"], flags=flags).train.seed == 5
    with pytest.raises(ConfigError, match="flag output_dir.x: 'output_dir' is set to a value"):
        load_config(Run, path, flags={"output_dir.x": 1})

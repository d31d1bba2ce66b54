"""Code that only reads or writes plain weights (exports, LoRA merges, adapter names) runs
without Megatron-Core: importing ``megatron.core`` costs seconds a process (issue 25: the
demo's processes), and these paths build no Megatron model."""

from __future__ import annotations

import subprocess
import sys

# a fresh interpreter: round-trips an export and merges an adapter, then lists Megatron
LIGHT_PATH = """
import sys, torch
from mugv_dit.config import model_preset
from mugv_dit.interop.export import load_export, save_export
from mugv_dit.lora.merge import merge_lora_state
from mugv_dit.lora.names import holds_only_adapters, is_adapter_name

out = sys.argv[1]
state = {"fc.weight": torch.ones(3, 2), "fc.lora_A": torch.ones(1, 2), "fc.lora_B": torch.ones(3, 1)}
merged = merge_lora_state(state, 0.5)
assert sorted(merged) == ["fc.weight"] and float(merged["fc.weight"][0, 0]) == 1.5
assert is_adapter_name("fc.lora_A") and not is_adapter_name("fc.weight")
assert not holds_only_adapters(torch.nn.Linear(2, 2))
save_export(out, model_preset("debug"), merged)
cfg, loaded = load_export(out)
assert cfg == model_preset("debug") and torch.equal(loaded["fc.weight"], merged["fc.weight"])
print(sorted(m for m in sys.modules if m == "megatron.core" or m.startswith("megatron.core.")))
"""


def test_exports_and_lora_merges_do_not_import_megatron(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", LIGHT_PATH, str(tmp_path / "export")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-2000:]


def test_the_adapters_module_re_exports_the_light_names():
    from mugv_dit.lora import adapters, names

    assert adapters.is_adapter_name is names.is_adapter_name
    assert adapters.holds_only_adapters is names.holds_only_adapters
    assert adapters.ADAPTER_SUFFIXES == names.ADAPTER_SUFFIXES == (".lora_A", ".lora_B")

"""mugv-dit's inputs and outputs under attack (issue 23): no code from dataset metadata or a
loader-state file, writers that never replace what they did not write, one run per output
folder, no writes through links planted in a run folder, every numeric setting range-checked,
a run folder that is a file or read-only is a one-line error."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from hostile_util import dit_config, make_latents

pytest.importorskip("megatron.core")


def plant_code_in_nv_meta(ds, marker) -> None:
    """A ``dataset.yaml`` naming a callable that energon would import and call: ``open``
    with mode ``w`` creates ``marker`` (harmless proof of execution)."""
    (ds / ".nv-meta" / "dataset.yaml").write_text(
        yaml.safe_dump(
            {"__module__": "builtins", "__class__": "open", "file": str(marker), "mode": "w"}
        )
    )


def _energon_loader(ds):
    from mugv_dit.data.energon import EnergonLatentLoader
    from mugv_dit.data.plan import BucketSampler, LatentIndex

    index = LatentIndex(ds)
    sampler = BucketSampler(
        index, tokens_per_batch=64, max_batch_size=4, micro_batches_per_step=1,
        patch=(1, 2, 2), seed=0,
    )  # fmt: skip
    return EnergonLatentLoader(ds, index=index, sampler=sampler, dp_rank=0, dp_size=1)


def test_code_named_by_nv_meta_is_never_run_by_training(tmp_path, capsys, megatron_single):
    """Severe 1: `train` with data.loader=energon on a dataset whose .nv-meta names a
    callable: one line naming the file, and the callable never runs."""
    from mugv_dit.cli import main

    ds = make_latents(tmp_path / "lat")
    marker = tmp_path / "PWNED"
    plant_code_in_nv_meta(ds, marker)
    assert main(["train", str(dit_config(tmp_path, ds, "run"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.yaml" in err and "not allowed" in err, err
    assert not marker.exists()


@pytest.mark.parametrize(
    "plant",
    [
        ("split.yaml", {"split_parts": {"train": ["shard-000000.tar"]},
                        "sample_loader": "os:system"}),
        ("split.yaml", {"split_parts": {"train": ["../../elsewhere/shard.tar"]}}),
        ("extra.py", None),
    ],
    ids=["split-callable", "split-outside", "unknown-file"],
)  # fmt: skip
def test_any_other_nv_meta_content_is_refused_before_energon(tmp_path, plant, megatron_single):
    """The loader checks the whole .nv-meta before energon sees it (other cases of the class:
    a sample_loader callable in split.yaml, a shard outside the folder, an unknown file)."""
    from mugv_formats.energon import NvMetaError

    ds = make_latents(tmp_path / "lat")
    name, data = plant
    (ds / ".nv-meta" / name).write_text("print(1)\n" if data is None else yaml.safe_dump(data))
    with pytest.raises(NvMetaError, match=name.replace(".", r"\.")):
        _energon_loader(ds)


def test_nv_meta_changed_after_start_is_refused_before_energon_reads_it(tmp_path, megatron_single):
    """The check runs again right before each energon dataset is opened."""
    from mugv_dit.config import StageConfig
    from mugv_formats.energon import NvMetaError

    ds = make_latents(tmp_path / "lat")
    loader = _energon_loader(ds)
    marker = tmp_path / "PWNED"
    plant_code_in_nv_meta(ds, marker)
    with pytest.raises(NvMetaError, match=r"dataset\.yaml"):
        loader.next_batches(0, 0, StageConfig(name="a", steps=4), 0.0, 1, "cpu")
    assert not marker.exists()


def _state_naming(cls_name: str) -> dict:
    return {
        "stage": 0,
        "reservoirs": [],
        "dropped": 0,
        "loader": {"__mugv_energon_class__": cls_name, "fields": {}},
    }


@pytest.mark.parametrize(
    "name",
    [
        "megatron.energon.tools.prepare:PrepareConfig",  # an energon module, not a state class
        "megatron.energon.flavors.webdataset.tar_patcher:TarPatcher",
        "os:system",
        "builtins:open",
    ],
)
def test_loader_state_file_cannot_choose_a_module_to_import(tmp_path, name):
    """Item 1, the second code-from-file path: a loader-state file names the classes to
    rebuild; only energon's state classes (an allow-list) are, and the module the file names
    is never imported (the old prefix check imported any megatron.energon.* module)."""
    from mugv_dit.data.energon import load_plain_state

    module = name.partition(":")[0]
    was_loaded = module in sys.modules
    path = tmp_path / "rank_00000.pt"
    torch.save(_state_naming(name), path)
    with pytest.raises(ValueError, match=r"rank_00000\.pt: energon loader state names class"):
        load_plain_state(path)
    assert was_loaded or module not in sys.modules, f"{module} was imported"


def test_loader_state_with_wrong_fields_is_a_named_error(tmp_path):
    from mugv_dit.data.energon import load_plain_state

    state = _state_naming("megatron.energon.savable_loader:SavableDataLoaderState")
    state["loader"]["fields"] = {"no_such_field": 1}
    path = tmp_path / "rank_00000.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"rank_00000\.pt: invalid energon loader state"):
        load_plain_state(path)


def test_loader_state_with_workers_round_trips(tmp_path, megatron_single):
    """With loader workers energon's state holds RNG states (tensors, numpy arrays, its
    SystemRngState): it is saved as plain data and restored to an equal state (saving it
    used to fail with 'not plain data')."""
    from mugv_dit.config import StageConfig
    from mugv_dit.data.energon import EnergonLatentLoader, load_plain_state, state_to_plain
    from mugv_dit.data.plan import BucketSampler, LatentIndex

    ds = make_latents(tmp_path / "lat")
    index = LatentIndex(ds)
    sampler = BucketSampler(
        index, tokens_per_batch=64, max_batch_size=4, micro_batches_per_step=1,
        patch=(1, 2, 2), seed=0,
    )  # fmt: skip
    loader = EnergonLatentLoader(
        ds, index=index, sampler=sampler, dp_rank=0, dp_size=1, num_workers=1
    )
    for step in range(2):
        loader.next_batches(step, 0, StageConfig(name="a", steps=4), 0.0, 1, "cpu")
    loader.save(tmp_path / "state.pt")
    restored = load_plain_state(tmp_path / "state.pt")
    again = state_to_plain(restored)
    torch.save(again, tmp_path / "again.pt")
    first = torch.load(tmp_path / "state.pt", weights_only=True)
    second = torch.load(tmp_path / "again.pt", weights_only=True)
    assert repr(first) == repr(second)

"""Latent shards through megatron-energon (Megatron's multimodal loader), savable state.

The dataset directory carries ``.nv-meta`` (written by mugv_formats, ``CrudeWebdataset``);
a cooker turns energon's raw members into samples (it decodes them itself, after taking the
sha256 of every member's bytes with ``mugv_formats.member_digests``; the loader checks them
against the manifest with the dataset's indexed reader, as the ``plan`` loader's reads are) and
each DP rank reads its own part of the stream (``WorkerConfig(rank=dp_rank, ...)``; TP/PP/CP ranks of one DP rank read the same).

Balanced steps: the bucket of every step is chosen by the same pure function as the ``plan``
loader (:meth:`mugv_dit.data.plan.BucketSampler.choose_bucket`: seed, step, stage filters and the
stage's image-share annealing, weighted by bucket size), so ALL DP ranks and all micro-batches
of a step share one bucket and one token-budget batch size, i.e. equal tokens per rank. Each
rank sorts its stream into per-bucket reservoirs and takes the step's samples from the chosen
one, pulling more from energon as needed. A reservoir holds at most ``reservoir_factor``
steps' worth of its bucket; samples arriving at a full one are dropped and counted (that is
how a bucket the schedule under-samples, e.g. images once their share is annealed down, is
thinned). A rank whose share of the shards lacks the step's bucket (small or skewed datasets)
reads the missing samples by key from the manifest instead (deterministically, counted and
warned about once). The loader state saved per rank next to each checkpoint is energon's own state
plus the reservoirs' sample keys (re-read by key on restore), so a resume is exact.

Balanced sampling (``data.weighted_sampling``, when the records' ``sample_weight`` differ):
each sample energon delivers is kept with probability ``weight / max weight`` (the
``n``-th pull of a rank decided by ``random.Random(f"{seed}:{dp_rank}:{n}")``, its count in
the saved state), the rest thinned and counted, so each sample's share of the stream -- and,
through the bucket reservoirs, of the draws -- follows its weight; the step's bucket is the
``plan`` loader's weighted choice and borrowed samples are drawn by weight too.

The state file holds plain data only (dicts, lists, str, int, bytes, tensors; energon's state
dataclasses as tagged dicts) and is read with ``torch.load(weights_only=True)``: a pickle
planted in a run folder is refused, never run. A tag names one of a fixed allow-list of
energon's state classes (:func:`_state_classes`), imported by us: a name in the file never
chooses a module to import.

Energon imports and runs whatever Python callable a dataset's ``.nv-meta`` names, so the
loader hands energon only metadata mugv wrote: ``mugv_formats.energon.check_nv_meta`` runs on
the dataset before every energon call (at construction and before each stage's dataset is
opened). Nothing else given to energon comes from a file: no subflavors, the ``train`` split
of the checked ``split.yaml``, a ``WorkerConfig`` of config integers, the task encoder
defined here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:
    from megatron.energon import (
        Cooker,
        DefaultTaskEncoder,
        Sample,
        SkipSample,
        WorkerConfig,
        basic_sample_keys,
        get_savable_loader,
        get_train_dataset,
    )
    from megatron.energon.edataclass import edataclass
    from megatron.energon.task_encoder.base import stateless
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("megatron"):
        raise
    raise ModuleNotFoundError(
        "data.loader=energon needs megatron-energon, an optional dependency of mugv-dit: "
        "install mugv-dit[energon] (or use data.loader=plan)",
        name=e.name,
    ) from None
from mugv_formats import ChecksumError, CorruptShardError, member_digests
from mugv_formats.energon import check_nv_meta

from mugv_dit.config import StageConfig
from mugv_dit.data.plan import BucketKey, BucketSampler, LatentIndex, stage_accepts
from mugv_dit.diffusion.prepare import CleanBatch


@edataclass
class LatentShardSample(Sample):
    """One latent-shard sample as energon delivers it."""

    record: dict
    latents: np.ndarray
    text: np.ndarray
    sha256: dict  # member ext ("json", "latents.npy", "text.npy") -> sha256 of its bytes


def _npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptShardError(f"{where}: not a readable .npy array ({e})") from None


@stateless
def cook_latent_sample(raw: dict) -> LatentShardSample:
    """Crude sample (raw member bytes) -> sample: the members' sha256, then their decoding."""
    key = raw.get("__key__")
    if "text.npy" not in raw:
        raise ValueError(f"sample {key}: no text features; run `mugv-dit embed-text`")
    for ext in ("json", "latents.npy"):
        if ext not in raw:
            raise CorruptShardError(f"sample {key}: member {key}.{ext} missing")
    try:
        record = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptShardError(f"sample {key}: {key}.json is not valid JSON ({e})") from None
    return LatentShardSample(
        **basic_sample_keys(raw),
        record=record,
        latents=_npy(raw["latents.npy"], f"sample {key}: member {key}.latents.npy"),
        text=_npy(raw["text.npy"], f"sample {key}: member {key}.text.npy"),
        sha256=member_digests(raw),
    )


class LatentTaskEncoder(DefaultTaskEncoder):
    """Single samples (no batching: buckets are formed by the loader), stage-filtered."""

    cookers = (Cooker(cook_latent_sample),)
    decoder = None  # raw bytes: the cooker checksums the members before decoding them

    def __init__(self, stage: StageConfig):
        super().__init__()
        self.stage = stage

    @stateless
    def encode_sample(self, sample: LatentShardSample) -> LatentShardSample:
        rec = sample.record
        if not stage_accepts(self.stage, _bucket_of(sample), int(rec["num_frames"])):
            raise SkipSample()
        return sample


def _bucket_of(sample: LatentShardSample) -> BucketKey:
    _, t, h, w = sample.latents.shape
    return (t, h, w, int(sample.record["height"]), int(sample.record["width"]))


@dataclass
class _Item:
    """One sample waiting in a bucket reservoir."""

    key: str
    latents: np.ndarray
    text: np.ndarray
    fps: float
    height: int
    width: int


def to_clean_batch(items: list[_Item], device) -> CleanBatch:
    shapes = {tuple(it.latents.shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(
            f"energon batch mixes latent shapes {sorted(shapes)} ({[it.key for it in items]})"
        )
    latents = torch.from_numpy(np.stack([it.latents.astype(np.float32) for it in items]))
    texts = [torch.from_numpy(np.asarray(it.text, dtype=np.float32)).to(device) for it in items]
    fps = torch.tensor([it.fps for it in items], dtype=torch.float32)
    return CleanBatch(
        latents.to(device),
        texts,
        fps.to(device),
        items[0].height,
        items[0].width,
        [it.key for it in items],
    )


class EnergonLatentLoader:
    """Per-stage energon streams of one DP rank with bucket reservoirs and savable state."""

    def __init__(
        self,
        path,
        *,
        index: LatentIndex,
        sampler: BucketSampler,
        dp_rank: int,
        dp_size: int,
        dp_group=None,
        num_workers: int = 0,
        seed: int = 0,
        reservoir_factor: int = 4,
    ):
        self.path = str(path)
        check_nv_meta(self.path)  # energon imports what its metadata names: only ours passes
        self.index = index
        self.sampler = sampler
        self.dp_rank = dp_rank
        self.reservoir_factor = reservoir_factor
        self.worker_config = WorkerConfig(
            rank=dp_rank,
            world_size=dp_size,
            num_workers=num_workers,
            data_parallel_group=dp_group,
            seed_offset=seed,
        )
        self.stage_idx: int | None = None
        self.loader = None
        self.iter = None
        self.reservoirs: dict[BucketKey, list[_Item]] = {}
        self.dropped = 0
        self.borrowed = 0
        self.pulled = 0  # samples taken from energon (weighted sampling: seeds the thinning)
        self.thinned = 0
        self.seed = seed
        weights = sampler.weights
        self._max_weight = max(weights) if weights is not None else None
        self._pending_state = None
        self._key_to_index = {r.key: i for i, r in enumerate(index.records)}

    def _open(self, stage_idx: int, stage: StageConfig) -> None:
        check_nv_meta(self.path)  # again right before energon reads it (it may have changed)
        ds = get_train_dataset(
            self.path,
            worker_config=self.worker_config,
            batch_size=None,
            shuffle_buffer_size=64,
            max_samples_per_sequence=16,
            task_encoder=LatentTaskEncoder(stage),
        )
        self.loader = get_savable_loader(ds)
        self.reservoirs = {}  # the previous stage's leftovers do not carry over
        pending, self._pending_state = self._pending_state, None
        if pending is not None and pending["stage"] == stage_idx:
            self.loader.restore_state_rank(pending["loader"])
            self.reservoirs = {
                tuple(bucket): [self._load_item(key) for key in keys]
                for bucket, keys in pending["reservoirs"]
            }
            self.dropped = int(pending["dropped"])
            self.borrowed = int(pending.get("borrowed", 0))
            self.pulled = int(pending.get("pulled", 0))
            self.thinned = int(pending.get("thinned", 0))
        self.stage_idx = stage_idx
        self.iter = iter(self.loader)

    def _load_item(self, key: str) -> _Item:
        if key not in self._key_to_index:
            raise ValueError(f"energon loader state names sample {key!r}, not in {self.path}")
        sample = self.index.load(self._key_to_index[key])
        r = sample.record
        return _Item(key, sample.latents, sample.text, float(r.fps), r.height, r.width)

    def _checked_record(self, sample: LatentShardSample):
        """The sample's manifest record, after checking that the record energon read from the
        shard (``KEY.json``) and the latents agree with it (a changed record is refused)."""
        key = sample.__key__
        if key not in self._key_to_index:
            raise CorruptShardError(f"{self.path}: sample {key!r} is not in the manifest")
        rec = self.index.records[self._key_to_index[key]]
        got = dict(sample.record)
        got["latent_shape"] = list(sample.latents.shape)
        want = rec.model_dump(mode="json")
        for field in ("fps", "num_frames", "height", "width", "latent_shape", "key"):
            if got.get(field) != want[field]:
                raise ChecksumError(
                    f"{self.path}: sample {key!r}: {field} is {got.get(field)!r} in the shard, "
                    f"{want[field]!r} in the manifest; the shard was changed"
                )
        # then every byte: the record (any field) and the arrays
        if self.index.verify:
            self.index.reader.verify_digests(key, sample.sha256)
        return rec

    def _capacity(self, bucket: BucketKey, n: int) -> int:
        return self.reservoir_factor * n * self.sampler.batch_size(bucket)

    def next_batches(
        self, step: int, stage_idx: int, stage: StageConfig, progress: float, n: int, device
    ) -> list[CleanBatch]:
        """This rank's ``n`` micro-batches of step ``step`` (all from the step's bucket)."""
        if stage_idx != self.stage_idx:
            self._open(stage_idx, stage)
        bucket = self.sampler.choose_bucket(step, stage, progress)
        bs = self.sampler.batch_size(bucket)
        need = n * bs
        pool = self.reservoirs.setdefault(bucket, [])
        # a rank whose share holds the bucket at all finds it within two passes over the data
        limit = 2 * len(self.index) + need
        pulled = 0
        while len(pool) < need and pulled < limit:
            sample = next(self.iter)
            pulled += 1
            if not self._keep(sample.__key__):
                continue
            got = _bucket_of(sample)
            queue = self.reservoirs.setdefault(got, [])
            if len(queue) >= self._capacity(got, n):
                self.dropped += 1
                continue
            rec = self._checked_record(sample)
            queue.append(
                _Item(sample.__key__, sample.latents, sample.text, rec.fps, rec.height, rec.width)
            )
        if len(pool) < need:
            pool.extend(self._borrow(step, stage, bucket, need - len(pool)))
        taken, pool[:] = pool[:need], pool[need:]
        return [to_clean_batch(taken[j * bs : (j + 1) * bs], device) for j in range(n)]

    def _keep(self, key: str) -> bool:
        """Weighted sampling: keep this pull with probability weight / max weight (always,
        without weights; a key not in the manifest is kept for the checks to refuse)."""
        if self._max_weight is None:
            return True
        n, self.pulled = self.pulled, self.pulled + 1
        row = self._key_to_index.get(key)
        if row is None:
            return True
        w = self.sampler.weights[row]
        if w >= self._max_weight or (
            random.Random(f"{self.seed}:{self.dp_rank}:{n}").random() * self._max_weight < w
        ):
            return True
        self.thinned += 1
        return False

    def _borrow(self, step: int, stage: StageConfig, bucket: BucketKey, k: int) -> list[_Item]:
        """``k`` samples of ``bucket`` read by key from the manifest, for a rank whose share of
        the shards lacks (enough of) the step's bucket; drawn from (seed, step, DP rank), so a
        resumed run borrows the same ones."""
        pool = self.sampler.eligible(stage, bucket)
        rng = random.Random((self.seed * 1_000_003 + step) * 1009 + self.dp_rank)
        weights = self.sampler.weights
        picks = rng.choices(pool, weights=None if weights is None else [weights[i] for i in pool], k=k)
        self.borrowed += k
        if self.borrowed == k:  # first time: say so once
            warnings.warn(
                f"{self.path}: DP rank {self.dp_rank}'s share of the shards lacks bucket "
                f"{bucket}; reading its samples from the manifest instead",
                stacklevel=2,
            )
        return [self._load_item(self.index.records[i].key) for i in picks]

    def state(self) -> dict:
        """Energon state + reservoir keys of this rank (what :meth:`save` writes)."""
        return {
            "stage": self.stage_idx,
            "loader": None if self.loader is None else self.loader.save_state_rank(),
            "reservoirs": [
                (list(b), [it.key for it in items]) for b, items in self.reservoirs.items()
            ],
            "dropped": self.dropped,
            "borrowed": self.borrowed,
            "pulled": self.pulled,
            "thinned": self.thinned,
        }

    def save(self, path: Path) -> None:
        torch.save(state_to_plain(self.state()), path)

    def restore(self, path: Path) -> None:
        if not path.is_file():
            raise ValueError(f"{path}: energon loader state missing (resume needs the same layout)")
        state = load_plain_state(path)
        if state["loader"] is not None:
            self._pending_state = state


# -- loader state as plain data -------------------------------------------------------------
_CLASS_TAG = "__mugv_energon_class__"
_NDARRAY = "numpy:ndarray"  # a numpy array, stored as a tensor


def state_to_plain(obj):
    """Energon loader state -> plain data (energon dataclasses and ``FlexState`` dicts become
    tagged dicts); anything else that is not plain data is refused."""
    from megatron.energon.state import FlexState

    if obj is None or isinstance(obj, bool | int | float | str | bytes | torch.Tensor):
        return obj  # torch.load(weights_only=True) reads tensors as data (workers' RNG states)
    if isinstance(obj, np.ndarray):  # RNG states of energon's workers
        return {_CLASS_TAG: _NDARRAY, "array": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, list | tuple):
        return type(obj)(state_to_plain(v) for v in obj)
    cls = type(obj)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if isinstance(obj, FlexState):
        return {_CLASS_TAG: name, "items": {k: state_to_plain(v) for k, v in obj.items()}}
    if isinstance(obj, dict):
        return {k: state_to_plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and name in _state_classes():
        fields = {f.name: state_to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_CLASS_TAG: name, "fields": fields}
    raise TypeError(f"energon loader state holds a {name}, which is not plain data")


def _state_classes() -> dict[str, type]:
    """The energon classes a loader state may name, by ``module:qualname`` (an allow-list:
    a name in a state file never picks what is imported; these are imported here, by us)."""
    from megatron.energon.flavors.webdataset.sample_loader import SliceState
    from megatron.energon.rng import SystemRngState
    from megatron.energon.savable_loader import (
        SavableDataLoaderState,
        SavableDatasetCheckpoint,
        SavableDatasetState,
    )
    from megatron.energon.state import FlexState

    classes = [
        FlexState,
        SavableDataLoaderState,
        SavableDatasetCheckpoint,
        SavableDatasetState,
        SliceState,
        SystemRngState,
    ]
    return {f"{c.__module__}:{c.__qualname__}": c for c in classes}


def _energon_class(name: str, where: Path):
    allowed = _state_classes()
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(
            f"{where}: energon loader state names class {name!r}, not one of energon's state "
            f"classes {sorted(allowed)}; refused"
        )
    return allowed[name]


def plain_to_state(obj, where: Path):
    """Inverse of :func:`state_to_plain`; only energon's state classes are rebuilt."""
    if isinstance(obj, list | tuple):
        return type(obj)(plain_to_state(v, where) for v in obj)
    if not isinstance(obj, dict):
        return obj
    if _CLASS_TAG not in obj:
        return {k: plain_to_state(v, where) for k, v in obj.items()}
    if obj[_CLASS_TAG] == _NDARRAY:
        array = obj.get("array")
        if not isinstance(array, torch.Tensor):
            raise ValueError(f"{where}: energon loader state holds a malformed array")
        return array.numpy()
    cls = _energon_class(obj[_CLASS_TAG], where)
    if "items" in obj:
        return cls({k: plain_to_state(v, where) for k, v in obj["items"].items()})
    return cls(**{k: plain_to_state(v, where) for k, v in obj["fields"].items()})


def load_plain_state(path: Path) -> dict:
    """Read a loader state file written by :meth:`EnergonLatentLoader.save`; a file holding
    anything but plain data (e.g. a planted pickle) raises ValueError naming it, unrun."""
    try:
        plain = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path}: energon loader state is not plain data and was not loaded ({first}); "
            "a state file written by mugv-dit holds plain data only"
        ) from None
    if not isinstance(plain, dict) or not {"stage", "loader", "reservoirs"} <= set(plain):
        raise ValueError(f"{path}: not an energon loader state of mugv-dit")
    try:
        return plain_to_state(plain, path)
    except (TypeError, AttributeError, KeyError) as e:
        raise ValueError(f"{path}: invalid energon loader state ({e})") from None

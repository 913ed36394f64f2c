"""A dataset wrapper mixing real and synthetic segmentation samples at a set ratio.

Config sketch (the synthetic set written by ``ganaug synth`` has ``images/`` and
``labels/`` folders and CamVid's label values)::

    train_dataloader = dict(dataset=dict(
        type='MixedRealSyntheticDataset',
        real=dict(type='CamVidDataset', data_root=..., data_prefix=dict(
            img_path='train', seg_map_path='trainannot'), pipeline=train_pipeline),
        synthetic=dict(type='CamVidDataset', data_root='work_dirs/p2p/synth', data_prefix=dict(
            img_path='images', seg_map_path='labels'), pipeline=train_pipeline),
        ratio=0.3))
    # optional: change the ratio during training
    custom_hooks = [dict(type='SyntheticRatioHook', schedule=[(0, 0.5), (400, 0.2)])]

Index layout (fixed length, so samplers never see the length change): indices
``[0, len(real))`` are the real samples; ``N_slots = round(r_max / (1 - r_max) * len(real))``
extra slots follow, where ``r_max`` is the largest ratio the run will use. Of those slots,
``round(r * length)`` yield synthetic samples and the rest yield extra real samples, so
exactly a share ``r`` of one pass over the dataset is synthetic. The current ratio lives in
shared memory, so DataLoader worker processes started by fork see the hook's updates.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence

import numpy as np
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import DATASETS, HOOKS
from torch.utils.data import Dataset

__all__ = ["MixedRealSyntheticDataset", "SyntheticRatioHook"]


def _build(cfg):
    return DATASETS.build(cfg) if isinstance(cfg, dict) else cfg


@DATASETS.register_module()
class MixedRealSyntheticDataset(Dataset):
    """Mix ``real`` and ``synthetic`` datasets so a share ``ratio`` of samples is synthetic.

    Args:
        real, synthetic: dataset configs (or built datasets) returning pipeline outputs.
        ratio: share of synthetic samples in one pass, in [0, 1).
        max_ratio: largest ratio a schedule may set later (defaults to ``ratio``); fixes
            the dataset length.
        seed: seeds the order in which synthetic samples are used.
    """

    def __init__(
        self,
        *,
        real,
        synthetic,
        ratio: float = 0.5,
        max_ratio: float | None = None,
        seed: int = 0,
        lazy_init: bool = False,
    ):
        max_ratio = ratio if max_ratio is None else max_ratio
        if not 0 <= ratio <= max_ratio < 1:
            raise ValueError(
                f"Need 0 <= ratio <= max_ratio < 1; got ratio={ratio}, max_ratio={max_ratio}."
            )
        self.real = _build(real)
        self.synthetic = _build(synthetic)
        if len(self.real) == 0:
            raise ValueError("MixedRealSyntheticDataset: the real dataset is empty.")
        if len(self.synthetic) == 0 and ratio > 0:
            raise ValueError(
                "MixedRealSyntheticDataset: the synthetic dataset is empty; check its "
                "data_root (a folder written by `ganaug synth`)."
            )
        self.max_ratio = max_ratio
        n_real = len(self.real)
        self.n_slots = round(max_ratio / (1 - max_ratio) * n_real)
        self._ratio = mp.Value("d", float(ratio), lock=False)
        self._round = mp.Value("l", 0, lock=False)
        self._perm = np.random.default_rng(seed).permutation(max(len(self.synthetic), 1))
        self.metainfo = getattr(self.real, "metainfo", {})

    @property
    def ratio(self) -> float:
        return self._ratio.value

    def set_ratio(self, ratio: float) -> None:
        """Change the synthetic share (0 <= ratio <= max_ratio)."""
        if not 0 <= ratio <= self.max_ratio:
            raise ValueError(
                f"ratio {ratio} outside [0, max_ratio={self.max_ratio}]; raise max_ratio in "
                f"the dataset config to allow it."
            )
        self._ratio.value = float(ratio)

    def next_round(self) -> None:
        """Move on to the next synthetic samples (when there are more than slots)."""
        self._round.value += 1

    def __len__(self) -> int:
        return len(self.real) + self.n_slots

    def is_synthetic(self, idx: int) -> bool:
        j = idx - len(self.real)
        return 0 <= j < round(self.ratio * len(self))

    def __getitem__(self, idx: int):
        n_real = len(self.real)
        if idx < n_real:
            return self.real[idx]
        j = idx - n_real
        if self.is_synthetic(idx):
            k = (j + self._round.value * self.n_slots) % len(self._perm)
            return self.synthetic[int(self._perm[k])]
        return self.real[(j * 7919) % n_real]  # an extra real sample, spread over the set

    def full_init(self) -> None:
        for ds in (self.real, self.synthetic):
            if hasattr(ds, "full_init"):
                ds.full_init()

    def get_data_info(self, idx: int) -> dict:
        if self.is_synthetic(idx):
            j = idx - len(self.real)
            k = (j + self._round.value * self.n_slots) % len(self._perm)
            return self.synthetic.get_data_info(int(self._perm[k]))
        n_real = len(self.real)
        return self.real.get_data_info(idx if idx < n_real else ((idx - n_real) * 7919) % n_real)


@HOOKS.register_module()
class SyntheticRatioHook(Hook):
    """Set the synthetic share of a :class:`MixedRealSyntheticDataset` by iteration.

    Args:
        schedule: ``[(start_iter, ratio), ...]``, piecewise constant, sorted by iteration.
        rotate_every: advance to the next synthetic samples every this many iterations
            (0: never).
    """

    def __init__(self, *, schedule: Sequence[Sequence[float]] = (), rotate_every: int = 0):
        self.schedule = sorted((int(i), float(r)) for i, r in schedule)
        self.rotate_every = rotate_every

    @staticmethod
    def _dataset(runner) -> MixedRealSyntheticDataset:
        ds = runner.train_dataloader.dataset
        if not isinstance(ds, MixedRealSyntheticDataset):
            raise TypeError(
                f"SyntheticRatioHook needs a MixedRealSyntheticDataset as training dataset; "
                f"got {type(ds).__name__}."
            )
        return ds

    def _apply(self, runner, iteration: int) -> None:
        ds = self._dataset(runner)
        ratio = None
        for start, r in self.schedule:
            if iteration >= start:
                ratio = r
        if ratio is not None and ratio != ds.ratio:
            ds.set_ratio(ratio)
            print_log(f"synthetic ratio -> {ratio} from iter {iteration}", logger="current")
        if self.rotate_every and iteration > 0 and iteration % self.rotate_every == 0:
            ds.next_round()

    def before_train(self, runner) -> None:
        # Also right after a resume: runner.iter is then the first iteration to run.
        self._apply(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        # mmengine's loop fetches a batch *before* calling before_train_iter, so a ratio set
        # there would reach the data one iteration late; set the next iteration's ratio now.
        # DataLoader workers prefetch (num_workers * prefetch_factor batches), which delays
        # the change by that many iterations; with num_workers=0 it is exact.
        self._apply(runner, runner.iter + 1)

"""The DataLoader of fitting: training then validation batches behind one set of workers.

Worker processes cut, normalize and augment whole batches (sampling.PatchBatches) and hand
them to the fitting loop through shared memory. A fresh shared-memory block per batch costs
more than cutting the batch (the kernel zeroes every page), so each worker writes into a small
ring of shared buffers it reuses; the ring is longer than the number of batches that can be
in flight (queued for the main process plus the one the loop holds), so a buffer is never
rewritten while the loop still reads it. Consumers must therefore not keep batches beyond
the next one (the fitting loop keeps none).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from collections.abc import Iterator

import numpy as np

from bone_apps.core.data.sampling import PatchBatches

TRAIN, VAL = 0, 1
PREFETCH = 2
# Buffers per worker and batch shape: prefetched batches + the one in use + spares.
_RING = 2 * PREFETCH + 2


def default_workers() -> int:
    """DataLoader worker processes: one per core, at most 8 (more rarely helps)."""
    return max(1, min(8, os.cpu_count() or 1))


def worker_init(seed: int, worker_id: int) -> None:
    """Seed a worker's generators and leave Ctrl-C to the main process, which stops cleanly."""
    import signal

    import torch

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    random.seed(seed + worker_id)
    np.random.seed((seed + worker_id) % 2**32)
    torch.manual_seed(seed + worker_id)


class FitBatches:
    """Map-style dataset over both phases: key (phase, epoch, b) -> (phase, b, image, mask),
    image and mask as tensors (shared-memory ring buffers inside worker processes)."""

    def __init__(self, train: PatchBatches, val: PatchBatches) -> None:
        self.parts = (train, val)
        self._rings: dict = {}
        self._turn: dict = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rings"], state["_turn"] = {}, {}
        return state

    def _buffer(self, shape: tuple[int, ...], dtype):
        import torch

        key = (shape, dtype)
        ring = self._rings.setdefault(key, [])
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        if len(ring) < _RING:
            ring.append(torch.empty(shape, dtype=dtype).share_memory_())
        return ring[turn % _RING]

    def __getitem__(self, key: tuple[int, int, int]):
        import torch
        from torch.utils.data import get_worker_info

        phase, epoch, b = key
        part = self.parts[phase]
        image_shape, mask_shape, mask_dtype = part.batch_shapes(epoch, b)
        if get_worker_info() is None:  # in the main process: plain memory
            image = torch.empty(image_shape, dtype=torch.float32)
            mask = torch.empty(mask_shape, dtype=_torch_dtype(mask_dtype))
        else:
            image = self._buffer(image_shape, torch.float32)
            mask = self._buffer(mask_shape, _torch_dtype(mask_dtype))
        part.read_into(epoch, b, image.numpy(), mask.numpy())
        return phase, b, image, mask


def _torch_dtype(dtype):
    import torch

    return {np.dtype(np.uint8): torch.uint8, np.dtype(np.int16): torch.int16}[np.dtype(dtype)]


class FitSampler:
    """Keys of one epoch: its training batches, then the validation batches, from a given
    phase and batch on (a resumed epoch)."""

    def __init__(self, dataset: FitBatches) -> None:
        self.dataset = dataset
        self.epoch, self.phase, self.start = 0, TRAIN, 0

    def set_epoch(self, epoch: int, phase: int = TRAIN, start: int = 0) -> None:
        self.epoch, self.phase, self.start = epoch, phase, start

    def _keys(self) -> list[tuple[int, int, int]]:
        train, val = self.dataset.parts
        keys = []
        if self.phase == TRAIN:
            keys += [(TRAIN, self.epoch, b)
                     for b in range(self.start, train.batches_per_epoch(self.epoch))]
        val_start = self.start if self.phase == VAL else 0
        keys += [(VAL, self.epoch, b) for b in range(val_start, val.batches_per_epoch())]
        return keys

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


def make_loader(dataset, sampler, workers: int | None, seed: int, pin_memory: bool):
    """A DataLoader yielding whole batches (batch_size=None) with persistent, seeded workers.

    Args:
        dataset: FitBatches (or any map-style dataset of whole batches).
        sampler: yields the dataset's keys in order.
        workers: worker processes (None: default_workers(); 0: in this process).
        seed: seeds the workers (reproducible mode relies on it).
        pin_memory: page-locked batches for fast copies to a GPU.
    """
    import torch
    from torch.utils.data import DataLoader

    workers = default_workers() if workers is None else workers
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=True, prefetch_factor=PREFETCH,
                     worker_init_fn=functools.partial(worker_init, seed))
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **extra)

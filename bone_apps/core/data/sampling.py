"""Tiles and patches: the data path of fitting (augmentation is augment.py).

A tile is one slice (2D), a slice with k neighbours on each side stacked as channels (2.5D,
edge slices replicated), or a slab of `patch_depth` slices (3D). Every epoch visits every
training tile once in a random order and crops a few random patches from it whose pairwise
overlap stays within a bound. Validation uses fixed patches.

Every random draw comes from a generator seeded with (seed, stream, epoch, index) instead
of one long-lived stream: DataLoader workers, DDP ranks and a resumed run therefore draw
exactly the same tile order, patch positions and augmentations without saving any
generator state, and an epoch can be resumed at any batch.

Data are never held whole: patches are cut from memory-mapped slices (uncompressed TIFF)
or from decoded slices kept in a small, bounded per-process cache.

The module needs no torch: a dataset item is a whole batch as NumPy arrays, which the
DataLoader turns into tensors in its worker processes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.choices import Choice
from bone_apps.core.data.augment import (
    AugmentConfig,
    Geometry,
    apply_geometry,
    apply_intensity,
    draw_geometry,
    draw_intensity,
)
from bone_apps.core.data.normalize import NormMethod, ScanStats, normalize
from bone_apps.core.errors import FitConfigError
from bone_apps.core.io.labels import LabelMap
from bone_apps.core.io.volume import Volume, open_volume

# Streams of random numbers, combined with the seed, epoch and index.
_ORDER, _TILE, _BATCH, _VAL = 1, 2, 3, 4
_OVERLAP_TRIES = 30  # candidate positions per patch before giving up on a random layout
_LAYOUT_TRIES = 10  # whole random layouts before falling back to a jittered grid


class Dims(Choice, what="fitting mode", error=FitConfigError):
    """Fitting mode: what a tile is and what the network sees."""

    D2 = "2d"
    D25 = "2.5d"
    D3 = "3d"



# ----------------------------------------------------------------------------------------------
# Patch positions


def _min_step(patch: int, max_overlap: float) -> int:
    """Smallest offset along one axis keeping two patches' overlap within max_overlap."""
    return max(1, math.ceil(patch * (1.0 - max_overlap) - 1e-9))


def patch_capacity(height: int, width: int, patch: int, max_overlap: float) -> int:
    """How many patches a (padded) tile is guaranteed to hold within the overlap bound."""
    height, width = max(height, patch), max(width, patch)
    if max_overlap >= 1.0:
        return 1 << 30
    step = _min_step(patch, max_overlap)
    return ((height - patch) // step + 1) * ((width - patch) // step + 1)


def overlap_fraction(a: tuple[int, int], b: tuple[int, int], patch: int) -> float:
    """Shared area of two patch x patch squares at (y, x) corners, as a fraction of one."""
    dy = max(0, patch - abs(a[0] - b[0]))
    dx = max(0, patch - abs(a[1] - b[1]))
    return dy * dx / float(patch * patch)


def sample_positions(
    height: int, width: int, patch: int, count: int, max_overlap: float, rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """`count` random top-left corners in a (padded) height x width tile, pairwise overlap
    <= max_overlap. Uniform random placement is tried first; when it cannot fit them, a
    randomly shifted grid with the smallest allowed spacing is used (count must not exceed
    patch_capacity)."""
    height, width = max(height, patch), max(width, patch)
    span_y, span_x = height - patch + 1, width - patch + 1
    if max_overlap >= 1.0 or count <= 1:
        return [(int(rng.integers(0, span_y)), int(rng.integers(0, span_x))) for _ in range(count)]
    for _ in range(_LAYOUT_TRIES):
        chosen: list[tuple[int, int]] = []
        for _ in range(count):
            for _ in range(_OVERLAP_TRIES):
                cand = (int(rng.integers(0, span_y)), int(rng.integers(0, span_x)))
                if all(overlap_fraction(cand, c, patch) <= max_overlap + 1e-12 for c in chosen):
                    chosen.append(cand)
                    break
            else:
                break
        if len(chosen) == count:
            return chosen
    step = _min_step(patch, max_overlap)
    ny, nx = (height - patch) // step + 1, (width - patch) // step + 1
    if count > ny * nx:
        raise ValueError(f"{count} patches do not fit; capacity is {ny * nx}")
    oy = int(rng.integers(0, height - patch - (ny - 1) * step + 1))
    ox = int(rng.integers(0, width - patch - (nx - 1) * step + 1))
    cells = rng.choice(ny * nx, size=count, replace=False)
    return [(oy + int(c) // nx * step, ox + int(c) % nx * step) for c in cells]


def slab_starts(depth: int, slab: int) -> list[int]:
    """First slice of each 3D tile: back-to-back slabs, the last one shifted to end at the
    final slice (one slab at 0, padded, when the scan is thinner than a slab)."""
    if depth <= slab:
        return [0]
    starts = list(range(0, depth - slab + 1, slab))
    if starts[-1] + slab < depth:
        starts.append(depth - slab)
    return starts


# ----------------------------------------------------------------------------------------------
# Reading


class SliceCache:
    """A small least-recently-used cache of slices, per process.

    Memory maps cost address space and a file handle, not RAM, so up to `max_maps` are kept;
    decoded (compressed) slices are kept up to `max_bytes` in all.
    """

    def __init__(self, max_maps: int = 64, max_bytes: int = 256 << 20) -> None:
        self.max_maps, self.max_bytes = max_maps, max_bytes
        self._maps: OrderedDict = OrderedDict()
        self._decoded: OrderedDict = OrderedDict()
        self._decoded_bytes = 0

    def get(self, volume: Volume, z: int) -> np.ndarray:
        key = (id(volume), z)  # volumes live as long as their dataset
        for store in (self._maps, self._decoded):
            if key in store:
                store.move_to_end(key)
                return store[key]
        mapped = volume.memmap_slice(z)
        if mapped is not None:
            self._maps[key] = mapped
            while len(self._maps) > self.max_maps:
                self._maps.popitem(last=False)
            return mapped
        data = volume.read_slice(z)
        self._decoded[key] = data
        self._decoded_bytes += data.nbytes
        while self._decoded_bytes > self.max_bytes and len(self._decoded) > 1:
            _, old = self._decoded.popitem(last=False)
            self._decoded_bytes -= old.nbytes
        return data


# ----------------------------------------------------------------------------------------------
# Datasets


@dataclass(frozen=True)
class ScanSource:
    """One scan/mask pair as the data path needs it."""

    id: str
    scan: Path
    mask: Path
    shape: tuple[int, int, int]
    stats: ScanStats


@dataclass(frozen=True)
class PatchLayout:
    """What a patch is: mode, size, context / depth, how many per tile and how far apart."""

    dims: Dims
    patch: int
    patches_per_tile: int
    max_overlap: float
    context: int = 0
    patch_depth: int = 1

    @property
    def in_channels(self) -> int:
        return 2 * self.context + 1 if self.dims is Dims.D25 else 1


class PatchBatches:
    """One side of the split (training or validation) as batches of patches.

    Item `(epoch, b)` is batch b of that epoch: (image, mask) NumPy arrays with shapes
    (B, C, P, P) float32 and (B, P, P) for 2D/2.5D, or (B, 1, D, P, P) and (B, D, P, P) for 3D;
    the mask is uint8 (int16 beyond 255 classes). Training batches are augmented and their
    tile order changes each epoch; validation batches are the same every epoch.

    Args:
        sources: the scans of this side.
        layout: patch geometry.
        norm: normalization method (each scan uses its own statistics).
        batch: patches per batch (per rank under DDP).
        seed: the run's seed.
        train: training (random order, augmentation) or validation (fixed).
        augment: augmentation probabilities, or None for none.
        rank, world: this process's share under DDP.
        classes: number of classes (picks the mask type).
        label_values: the mask value of class 0, 1, ... (labels.LabelMap) when the masks do not
            hold 0..N-1 (e.g. 0/255); None or 0, 1, ...: mask values are the classes.
    """

    cache_factory = SliceCache  # how each process keeps the slices it reads

    def __init__(
        self,
        sources: list[ScanSource],
        layout: PatchLayout,
        norm: NormMethod | str,
        batch: int,
        seed: int,
        train: bool,
        augment: AugmentConfig | None = None,
        rank: int = 0,
        world: int = 1,
        classes: int = 3,
        label_values: tuple[int, ...] | None = None,
    ) -> None:
        if not sources:
            raise FitConfigError("no scans on this side of the split.")
        self.sources = sources
        self.layout = layout
        self.norm = NormMethod.parse(norm)
        self.batch = int(batch)
        self.seed = int(seed)
        self.train = train
        self.augment = augment if train else None
        self.rank, self.world = rank, world
        self.mask_dtype = np.uint8 if classes <= 256 else np.int16
        label_map = LabelMap(tuple(label_values)) if label_values else None
        self.label_lut = None if label_map is None or label_map.is_identity else label_map.lut()
        self.scans = [open_volume(s.scan) for s in sources]
        self.masks = [open_volume(s.mask, role="mask") for s in sources]
        tiles_scan, tiles_z, counts = [], [], []
        for i, s in enumerate(sources):
            depth, height, width = s.shape
            zs = slab_starts(depth, layout.patch_depth) if layout.dims is Dims.D3 else range(depth)
            tiles_scan += [i] * len(zs)
            tiles_z += list(zs)
            counts.append(min(layout.patches_per_tile,
                              patch_capacity(height, width, layout.patch, layout.max_overlap)))
        self.tile_scan = np.asarray(tiles_scan, dtype=np.int64)
        self.tile_z = np.asarray(tiles_z, dtype=np.int64)
        self.per_scan_patches = np.asarray(counts, dtype=np.int64)
        self.tile_patches = self.per_scan_patches[self.tile_scan]
        self._cache: SliceCache | None = None
        self._plan_epoch: int | None = None
        self._plan: list[np.ndarray] = []
        if not train:
            self._plan = self._val_plan()

    # Pickled into DataLoader workers without their caches.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None
        if self.train:
            state["_plan_epoch"], state["_plan"] = None, []
        return state

    @property
    def tiles(self) -> int:
        return len(self.tile_scan)

    @property
    def patches_per_epoch(self) -> int:
        """Patches one epoch visits across all ranks (before DDP padding)."""
        return int(self.tile_patches.sum())

    # Plans: which (tile, k) pairs form each batch -------------------------------------------

    def _entries(self, tiles: np.ndarray) -> np.ndarray:
        """(tile, k) rows for these tiles in order, k = 0..patches of that tile - 1."""
        counts = self.tile_patches[tiles]
        rows = np.repeat(tiles, counts)
        starts = np.cumsum(counts) - counts
        ks = np.arange(rows.size) - np.repeat(starts, counts)
        return np.stack([rows, ks], axis=1)

    def _chunk(self, entries: np.ndarray) -> list[np.ndarray]:
        n, b = len(entries), self.batch
        if self.world > 1 and self.train:
            return [entries[i:i + b] for i in range(0, n, b)]
        batches = [entries[i:i + b] for i in range(0, n, b)]
        # A last batch of one patch breaks batch normalization; it joins the previous batch.
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2] = np.concatenate([batches[-2], batches.pop()])
        return batches

    def _train_plan(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, _ORDER, epoch]).permutation(self.tiles)
        if self.world == 1:
            return self._chunk(self._entries(order))
        # Every rank must run the same number of steps: pad the tile list like PyTorch's
        # DistributedSampler, then fill each rank's last batch by cycling its own patches.
        padded = np.resize(order, math.ceil(self.tiles / self.world) * self.world)
        shares = [padded[r::self.world] for r in range(self.world)]
        sizes = [int(self.tile_patches[s].sum()) for s in shares]
        steps = max(math.ceil(s / self.batch) for s in sizes)
        entries = self._entries(shares[self.rank])
        entries = np.resize(entries, (steps * self.batch, 2))
        return self._chunk(entries)

    def _val_plan(self) -> list[np.ndarray]:
        batches = self._chunk(self._entries(np.arange(self.tiles)))
        return batches[self.rank::self.world]

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The batches of `epoch` for this rank, as arrays of (tile, k) rows."""
        if not self.train:
            return self._plan
        if self._plan_epoch != epoch:
            self._plan, self._plan_epoch = self._train_plan(epoch), epoch
        return self._plan

    def batches_per_epoch(self, epoch: int = 0) -> int:
        return len(self.plan(epoch))

    # Reading one batch ----------------------------------------------------------------------

    def batch_shapes(self, epoch: int, b: int) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype]:
        """Shapes of batch b's image and mask arrays, and the mask's type."""
        n = len(self.plan(epoch)[b])
        layout, p = self.layout, self.layout.patch
        if layout.dims is Dims.D3:
            image, mask = (n, 1, layout.patch_depth, p, p), (n, layout.patch_depth, p, p)
        else:
            image, mask = (n, layout.in_channels, p, p), (n, p, p)
        return image, mask, np.dtype(self.mask_dtype)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Batch (epoch, b) as new arrays."""
        epoch, b = int(key[0]), int(key[1])
        image_shape, mask_shape, mask_dtype = self.batch_shapes(epoch, b)
        image = np.empty(image_shape, dtype=np.float32)
        mask = np.empty(mask_shape, dtype=mask_dtype)
        self.read_into(epoch, b, image, mask)
        return image, mask

    def read_into(self, epoch: int, b: int, image: np.ndarray, mask: np.ndarray) -> None:
        """Cut, normalize and augment batch b of `epoch` into `image` and `mask` (shapes
        from batch_shapes)."""
        rows = self.plan(epoch)[b]
        if self._cache is None:
            self._cache = self.cache_factory()
        tile_draws: dict[int, tuple[Geometry, list[tuple[int, int]]]] = {}
        for j, (tile, k) in enumerate(rows):
            tile = int(tile)
            if tile not in tile_draws:
                tile_draws[tile] = self._draw_tile(epoch, tile)
            geometry, positions = tile_draws[tile]
            raw, label = self._read_patch(tile, *positions[int(k)])
            image[j] = apply_geometry(raw, geometry).reshape(image.shape[1:])
            normalize(image[j], self.sources[int(self.tile_scan[tile])].stats, self.norm,
                      out=image[j])
            if self.label_lut is not None:  # the user's mask values -> classes 0..N-1
                label = self.label_lut[label]
            mask[j] = apply_geometry(label, geometry)
        if self.augment is not None:
            # Each patch gets its own brightness and contrast. One draw per batch would be
            # invisible to batch normalization everywhere except where the network's zero
            # padding meets the shifted image: the patch border became an intensity
            # reference that a large prediction window lacks (window-size dependent output).
            rng = np.random.default_rng([self.seed, _BATCH, epoch, b])
            for j in range(len(rows)):
                apply_intensity(image[j], *draw_intensity(rng, self.augment), self.norm)

    def _draw_tile(self, epoch: int, tile: int) -> tuple[Geometry, list[tuple[int, int]]]:
        """The tile's transform and all its patch corners (same on every worker and rank)."""
        if self.train:
            rng = np.random.default_rng([self.seed, _TILE, epoch, tile])
        else:
            rng = np.random.default_rng([self.seed, _VAL, tile])
        geometry = draw_geometry(rng, self.augment) if self.augment is not None else Geometry.NONE
        _, height, width = self.sources[int(self.tile_scan[tile])].shape
        count = int(self.tile_patches[tile])
        positions = sample_positions(height, width, self.layout.patch, count,
                                     self.layout.max_overlap, rng)
        return geometry, positions

    def _crop(self, volume: Volume, z: int, y: int, x: int, image: bool) -> np.ndarray:
        """A patch x patch crop at (y, x) of slice z, in padded-tile coordinates."""
        p = self.layout.patch
        _, height, width = volume.shape
        plane = self._cache.get(volume, z)
        if height >= p and width >= p:
            return plane[y:y + p, x:x + p]
        # Tiles smaller than a patch are padded around the centre: the image by reflection,
        # the mask with background.
        pad_y, pad_x = max(0, p - height), max(0, p - width)
        pads = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
        full = np.asarray(plane)
        padded = np.pad(full, pads, mode="reflect") if image else np.pad(full, pads)
        return padded[y:y + p, x:x + p]

    def _read_patch(self, tile: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw image (C, P, P) or (D, P, P) and mask (P, P) or (D, P, P) of one patch."""
        s = int(self.tile_scan[tile])
        z = int(self.tile_z[tile])
        scan, mask_vol = self.scans[s], self.masks[s]
        depth = scan.shape[0]
        layout = self.layout
        if layout.dims is Dims.D2:
            raw = self._crop(scan, z, y, x, True)[None]
            label = self._crop(mask_vol, z, y, x, False)
        elif layout.dims is Dims.D25:
            zs = [min(max(z + d, 0), depth - 1) for d in range(-layout.context, layout.context + 1)]
            raw = np.stack([self._crop(scan, zz, y, x, True) for zz in zs])
            label = self._crop(mask_vol, z, y, x, False)
        else:
            zs = list(range(z, min(z + layout.patch_depth, depth)))
            raw = np.stack([self._crop(scan, zz, y, x, True) for zz in zs])
            label = np.stack([self._crop(mask_vol, zz, y, x, False) for zz in zs])
            missing = layout.patch_depth - len(zs)
            if missing:  # a scan thinner than a slab: pad along z like in-plane
                raw = np.pad(raw, ((0, missing), (0, 0), (0, 0)), mode="reflect")
                label = np.pad(label, ((0, missing), (0, 0), (0, 0)))
        return raw, label

"""Sample micro-CT-like scans of long bones with Bone-Pores masks, for the demo and tests.

Each scan holds one to three long bones running along z: an elliptical cortical shell
(label 1, bone) around a medullary cavity (label 2, pores) that is air-filled in dry museum
bones or soft-tissue-filled in hydrated ones, trabecular bone towards the ends, small cortical
pores, a soft-tissue envelope in hydrated specimens, closely packed neighbours, blur and
noise, in 8- or 16-bit.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.io.volume import VoxelSize
from bone_apps.core.io.writer import write_volume

BACKGROUND, BONE, PORES = 0, 1, 2
CLASS_NAMES = ("background", "bone", "pores")


@dataclass(frozen=True)
class SampleScan:
    """One generated scan and its mask, in memory."""

    name: str
    scan: np.ndarray  # (Z, Y, X) uint8 or uint16
    mask: np.ndarray  # (Z, Y, X) uint8 labels 0/1/2
    voxel_size: VoxelSize
    hydrated: bool


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, cell: int) -> np.ndarray:
    """A random field with features about `cell` voxels across, values roughly in [0, 1]."""
    z, y, x = shape
    coarse = rng.random((z // max(1, cell // 2) + 2, y // cell + 2, x // cell + 2), dtype=np.float32)
    zi = np.linspace(0, coarse.shape[0] - 1.001, z, dtype=np.float32)
    yi = np.linspace(0, coarse.shape[1] - 1.001, y, dtype=np.float32)
    xi = np.linspace(0, coarse.shape[2] - 1.001, x, dtype=np.float32)
    # Separable linear interpolation, one axis at a time.
    for axis, coords in ((0, zi), (1, yi), (2, xi)):
        lo = np.floor(coords).astype(np.intp)
        frac = (coords - lo).reshape([-1 if a == axis else 1 for a in range(3)])
        coarse = (np.take(coarse, lo, axis=axis) * (1 - frac)
                  + np.take(coarse, lo + 1, axis=axis) * frac)
    return coarse


def _blur(volume: np.ndarray, passes: int) -> np.ndarray:
    """In-plane binomial blur (approximately Gaussian), `passes` times [1 2 1]/4 per axis."""
    for _ in range(passes):
        for axis in (1, 2):
            padded = np.pad(volume, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
            lo = np.take(padded, range(0, volume.shape[axis]), axis=axis)
            mid = np.take(padded, range(1, volume.shape[axis] + 1), axis=axis)
            hi = np.take(padded, range(2, volume.shape[axis] + 2), axis=axis)
            volume = (lo + 2 * mid + hi) * 0.25
    return volume


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy, cx, ry, rx) -> np.ndarray:
    """Voxels inside the ellipse (broadcast over z when the centre or radii vary with z)."""
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_sample_scan(
    shape: tuple[int, int, int], rng: np.random.Generator, name: str = "sample",
    hydrated: bool | None = None, bits: int | None = None, dim: bool | None = None,
) -> SampleScan:
    """Generate one scan and its Bone-Pores mask.

    The first bone is large: its medullary cavity is wider than a typical training patch
    (about 0.4-0.6 of the slice), so what decides bone, pores and background inside it is
    context, not intensity alone; up to two smaller neighbours sit beside it. Towards the ends
    the cavity fills with trabecular bone, and a growth plate (cartilage, labelled pores)
    crosses the bone near one end. Cavities hold marrow (hydrated) or dried residue slightly
    denser than the air around the bone.

    Args:
        shape: (Z, Y, X) in voxels.
        rng: the random generator that decides everything about the scan.
        hydrated: soft tissue in the cavities and around the bones; random if None.
        bits: 8 or 16; random if None.
        dim: low bone contrast and more noise (an under-exposed scan); random if None.
    """
    nz, ny, nx = shape
    hydrated = bool(rng.random() < 0.5) if hydrated is None else hydrated
    bits = int(rng.choice([8, 16])) if bits is None else bits
    dim = bool(rng.random() < 0.3) if dim is None else dim
    mask = np.zeros(shape, dtype=np.uint8)
    envelope = np.zeros(shape, dtype=bool)
    zz = np.arange(nz, dtype=np.float32)[:, None, None]
    yy = np.arange(ny, dtype=np.float32)[None, :, None]
    xx = np.arange(nx, dtype=np.float32)[None, None, :]
    size = float(min(ny, nx))
    trabecular = _smooth_field(shape, rng, cell=max(3, int(size) // 32)) > 0.52
    mid = nz / 2
    # Long bones flare towards the ends (metaphyses).
    flare = 1 + 0.2 * (np.abs(zz - mid) / max(1.0, mid)) ** 2
    # The large bone, then up to two small neighbours in free corners.
    n_small = int(rng.integers(0, 3))
    big_r = size * rng.uniform(0.27, 0.33)
    bones = [(ny * rng.uniform(0.45, 0.55), nx * rng.uniform(0.42, 0.5), big_r)]
    corners = [(0.17, 0.83), (0.83, 0.83), (0.2, 0.17), (0.8, 0.15)]
    for k in rng.permutation(len(corners))[:n_small]:
        fy, fx = corners[int(k)]
        bones.append((ny * fy, nx * fx, size * rng.uniform(0.08, 0.12)))
    plate_z = int(nz * rng.choice([0.12, 0.88])) if nz >= 8 else -1
    for i, (cy0, cx0, radius) in enumerate(bones):
        a = radius * rng.uniform(0.85, 1.0)
        b = radius * rng.uniform(0.8, 1.0)
        cortex = radius * rng.uniform(0.14, 0.24)
        cy = cy0 + rng.uniform(-2, 2) * zz / max(1, nz)
        cx = cx0 + rng.uniform(-2, 2) * zz / max(1, nz)
        # An eccentric cavity: the cortex is thicker on one side, as in real diaphyses.
        shift = cortex * 0.35
        angle = rng.uniform(0, 2 * np.pi)
        inside = _ellipse(yy, xx, cy, cx, b * flare, a * flare)
        cavity = _ellipse(yy, xx, cy + shift * np.sin(angle), cx + shift * np.cos(angle),
                          b * flare - cortex, a * flare - cortex)
        near_end = np.abs(zz - mid) > nz * rng.uniform(0.28, 0.38)
        mask[inside] = BONE
        mask[cavity & ~(near_end & trabecular)] = PORES
        if i == 0 and plate_z >= 0:
            plate = (np.abs(zz - plate_z) <= max(1, nz // 24)) & inside
            mask[plate & ~_ellipse(yy, xx, cy, cx, b * flare - 1.5, a * flare - 1.5)] = BONE
            mask[plate & _ellipse(yy, xx, cy, cx, b * flare - 1.5, a * flare - 1.5)] = PORES
        envelope |= _ellipse(yy, xx, cy, cx, b * flare * 1.35, a * flare * 1.35)
    # Cortical pores: small canals running along z through the bone.
    n_canals = int(rng.integers(4, 12)) * len(bones)
    for _ in range(n_canals):
        py, px, radius = rng.uniform(0, ny), rng.uniform(0, nx), rng.uniform(0.8, 1.8)
        canal = ((yy - py) ** 2 + (xx - px) ** 2 <= radius**2) & (mask == BONE)
        mask[np.broadcast_to(canal, shape)] = PORES
    # Intensities: air, soft tissue, marrow (or dried residue), bone; blur, noise, shading.
    air, soft = 0.06, 0.30
    marrow = 0.38 if hydrated else 0.13
    bone = rng.uniform(0.42, 0.52) if dim else rng.uniform(0.68, 0.85)
    image = np.full(shape, air, dtype=np.float32)
    if hydrated:
        image[envelope] = soft
    image[mask == PORES] = marrow
    image[mask == BONE] = bone
    image *= 1 - 0.1 * _smooth_field(shape, rng, cell=max(4, int(size) // 4))
    image = _blur(image, passes=int(rng.integers(1, 3)))
    noise = rng.uniform(0.05, 0.07) if dim else rng.uniform(0.02, 0.045)
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    np.clip(image, 0.0, 1.0, out=image)
    scale = 255.0 if bits == 8 else (30000.0 if dim else 60000.0)
    scan = (image * scale).astype(np.uint8 if bits == 8 else np.uint16)
    voxel_um = float(rng.choice([6.0, 12.5, 20.0, 35.0]))
    return SampleScan(name, scan, mask, VoxelSize(voxel_um, voxel_um, voxel_um), hydrated)


# Peak memory while one scan is made (float32 intensities, noise, blur, masks), measured at
# about 40 bytes per voxel; and what a scan and its mask take on disk (16-bit scan, 8-bit
# mask, uncompressed TIFF slices with their headers).
_RAM_PER_VOXEL = 48
_DISK_PER_VOXEL = 3
_DISK_PER_SLICE = 2 * 1024


def check_sample_request(out: str | os.PathLike, scans: int, shape: Sequence[int]) -> None:
    """Refuse a sample dataset that cannot be made here, before anything is written.

    Raises:
        BoneAppsError: fewer than one scan, a size below 1, or scans larger than the free
            memory (one scan is made at a time) or the free disk below `out` allow; the
            sentence names the largest shape that fits.
    """
    import psutil

    from bone_apps.core.errors import BoneAppsError

    shape = tuple(int(n) for n in shape)
    if scans < 1 or len(shape) != 3 or min(shape) < 1:
        raise BoneAppsError(f"--scans {scans} --shape {' '.join(map(str, shape))} cannot be made: "
                            "give at least 1 scan and three sizes of at least 1 (slices, height, "
                            "width), e.g. --shape 32 128 128.")
    drawable = _drawable_shape(shape)
    if drawable != list(shape):
        raise BoneAppsError(f"--shape {' '.join(map(str, shape))} cannot be drawn: with these "
                            f"other sizes the longest that works is --shape "
                            f"{' '.join(map(str, drawable))}.")
    voxels = math.prod(shape)
    ram = psutil.virtual_memory().available
    place = Path(out).expanduser().absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    disk = shutil.disk_usage(place).free
    per_scan_disk = _DISK_PER_VOXEL * voxels + _DISK_PER_SLICE * shape[0]
    ram_limit = ram // _RAM_PER_VOXEL
    disk_limit = (disk // scans - _DISK_PER_SLICE * shape[0]) // _DISK_PER_VOXEL
    if voxels <= ram_limit and per_scan_disk * scans <= disk:
        return
    if voxels > ram_limit:
        need = (f"about {_RAM_PER_VOXEL * voxels / 2**30:,.1f} GB of memory to make each scan, "
                f"but {ram / 2**30:.1f} GB is available")
    else:
        need = (f"about {per_scan_disk * scans / 2**30:,.1f} GB of disk for {scans} scans and "
                f"masks, but {disk / 2**30:.1f} GB is free at {place}")
    if voxels <= ram_limit and disk // per_scan_disk >= 1:
        raise BoneAppsError(f"--scans {scans} of --shape {' '.join(map(str, shape))} need {need}: "
                            f"use --scans {disk // per_scan_disk} or fewer.")
    limit = max(1, min(ram_limit, disk_limit if voxels > ram_limit else
                       (disk - _DISK_PER_SLICE * shape[0]) // _DISK_PER_VOXEL))
    largest = _fitting_shape(shape, limit)
    raise BoneAppsError(f"--shape {' '.join(map(str, shape))} needs {need}: the largest that fits "
                        f"is about {limit:,} voxels per scan, e.g. --shape "
                        f"{' '.join(map(str, largest))}.")


# The random fields behind shading and trabeculae interpolate a coarse grid in float32,
# which stays exact up to this many grid points along an axis.
_MAX_COARSE = 32769


def _coarse_sizes(shape: Sequence[int]) -> list[int]:
    """Grid sizes along each axis of make_sample_scan's coarse random fields."""
    nz, ny, nx = shape
    size = min(ny, nx)
    sizes = []
    for cell in (max(3, size // 32), max(4, size // 4)):
        sizes += [nz // max(1, cell // 2) + 2, ny // cell + 2, nx // cell + 2]
    return sizes


def _drawable_shape(shape: Sequence[int]) -> list[int]:
    """`shape`, with each axis too long to be drawn cut to the longest that can be."""
    result = list(shape)
    for _ in range(3):
        sizes = _coarse_sizes(result)
        if max(sizes) <= _MAX_COARSE:
            break
        axis = sizes.index(max(sizes)) % 3  # the axis with the most grid points
        low, high = 1, result[axis]
        while low < high:  # the longest this axis may be, the others as they are
            middle = (low + high + 1) // 2
            trial = result[:axis] + [middle] + result[axis + 1:]
            low, high = (middle, high) if max(_coarse_sizes(trial)) <= _MAX_COARSE else (low, middle - 1)
        result[axis] = low
    return result


def _fitting_shape(shape: tuple[int, ...], limit: int) -> list[int]:
    """`shape` shrunk in proportion until it holds at most `limit` voxels."""
    shape_ = list(shape)
    for _ in range(3):  # sizes that reach 1 leave the rest to shrink further
        large = [i for i, n in enumerate(shape_) if n > 1]
        total = math.prod(shape_)
        if total <= limit or not large:
            break
        factor = (max(limit, 1) / total) ** (1 / len(large))
        for i in large:
            shape_[i] = max(1, int(shape_[i] * factor))
    return shape_


def write_sample_dataset(
    out: str | os.PathLike, scans: int = 4, seed: int = 0,
    shape: tuple[int, int, int] = (32, 128, 128), overwrite: bool = False,
) -> list[str]:
    """Write `scans` sample scans as OUT/scans/<id>/ and OUT/masks/<id>/ folders of TIFF slices.

    Returns the scan ids. Scan k uses a generator seeded from (seed, k), so the same seed
    always gives the same scans.

    Raises:
        BoneAppsError: the request cannot be made here (check_sample_request), or OUT holds
            files bone_apps did not write.
    """
    check_sample_request(out, scans, shape)
    out = Path(out).expanduser()
    from bone_apps.core.io.outputs import claim_folder

    # New, empty, or a dataset bone_apps wrote; each scan is replaced only if ours (overwrite).
    claim_folder(out, "dataset", ("scans", "masks"), overwrite)
    (out / "scans").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(scans):
        rng = np.random.default_rng([seed, k])
        sample = make_sample_scan(shape, rng, name=f"bone_{k:02d}",
                                  hydrated=k % 2 == 1, bits=8 if k % 3 == 2 else 16)
        names = [f"{sample.name}_{z:04d}.tif" for z in range(shape[0])]
        write_volume(out / "scans" / sample.name, sample.scan, names, sample.voxel_size, overwrite)
        write_volume(out / "masks" / sample.name, sample.mask, names, sample.voxel_size, overwrite)
        ids.append(sample.name)
    return ids

"""Direct 3D local thickness (Hildebrand & Rueegsegger 1997), exact, streamed in z-slabs.

The local thickness at a voxel of a structure is the diameter of the largest ball that fits inside
the structure and contains the voxel. It is computed in four steps:

1. Distance transform: `edt` (anisotropic, multithreaded) gives every structure voxel c the squared
   distance D(c)^2 from its centre to the nearest voxel centre outside the structure. The image's
   own edges are not background: a structure cut by them is taken to continue beyond them.
2. Snapping: every D^2 is the squared length of a lattice vector, so it is replaced by its index in
   the sorted list of those lengths (`Lattice`). From then on every comparison is between
   integers, and float32 rounding in the transform cannot change a result.
3. Ridge: the ball of c holds the voxel centres strictly closer to c than D(c), all inside the
   structure. A voxel whose ball lies inside the ball of one of its 26 neighbours is dropped: that
   neighbour paints a larger value wherever c would. The test is exact (a table of the farthest
   point of each discrete ball from each kind of neighbour), and chains of drops are safe because
   D grows strictly along them.
4. Sphere fitting: every voxel left paints max(value, 2 D(c)) into each voxel of its ball.

No maintained library does step 4 exactly at this scale (porespy's local_thickness rounds radii
down to integers, or to 25 sizes with its legacy method, with one distance transform per size), so
it is written here: NumPy, vectorised over all centres for each offset of the ball, and per centre
over a box for the few largest balls (whichever a cost model finds cheaper; max is
order-independent, so the result is the same). It runs on one core; the transform uses them all.

Slabs: a volume that does not fit in memory is processed in z-slabs. A first pass finds the
largest radius R (each slab's transform is trusted only where D <= the distance to the slab's cut
faces, else the slab is widened and redone). The second pass loads each slab with 2K+1 extra
slices on each side, K = floor(R / z-edge) + 1: only centres within K slices can reach the slab,
their nearest background voxel is within R so it is loaded, and their ridge test sees exact
neighbours. Each slab's result is therefore identical to the whole volume's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import edt
import numpy as np

# Squared lattice lengths closer than this (relative) are one length computed two ways.
_SAME = 1e-9
# Cost model of the sphere fitting, in seconds: one NumPy call; one voxel painted per offset
# (random access); one voxel of a per-centre box (sequential access).
_CALL_S = 4e-6
_RANDOM_VOXEL_S = 1e-8
_BOX_VOXEL_S = 3e-9
_FIRST_MARGIN = 8  # slices each side of a slab in the first pass, doubled until exact
_SNAP_BLOCK = 1 << 22
_RIDGE_BLOCK = 1 << 22  # voxels per block of the ridge test (its temporaries stay small)

PhaseReader = Callable[[int, int], np.ndarray]
"""Returns the structure (bool, shape (z1 - z0, Y, X)) of slices z0..z1-1."""


def unit_spacing(voxel_um: tuple[float, float, float]) -> tuple[float, tuple[float, float, float]]:
    """The smallest voxel edge (um) and the edges (z, y, x) in units of it (isotropic: all 1)."""
    unit = min(voxel_um)
    return unit, tuple(float(v) / unit for v in voxel_um)


def _octant(spacing: tuple[float, float, float], reach: float) -> np.ndarray:
    """Squared lengths of lattice vectors with non-negative components up to `reach` per axis."""
    axes = [(np.arange(int(math.floor(reach / a)) + 1) * a) ** 2 for a in spacing]
    return axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]


class Lattice:
    """Squared lengths of lattice vectors (in units of the smallest voxel edge), sorted and
    distinct, and which discrete ball contains which.

    Args:
        spacing: voxel edges (z, y, x) in units of the smallest one.
        max_norm: the largest squared radius (D^2) of any ball to be painted.
    """

    def __init__(self, spacing: tuple[float, float, float], max_norm: float) -> None:
        self.spacing = spacing
        neighbour = math.sqrt(sum(a * a for a in spacing))
        reach = math.sqrt(max_norm) + neighbour + 1.0
        grid = _octant(spacing, reach)
        values = np.unique(grid[grid <= reach * reach])
        keep = np.ones(values.size, dtype=bool)
        keep[1:] = np.diff(values) > _SAME * values[1:]
        self.norms = values[keep]
        self._mid = (self.norms[1:] + self.norms[:-1]) / 2
        self.dtype = np.dtype(np.uint16 if self.norms.size < 2**16 else np.uint32)
        self.top = int(self.index(np.array([max_norm]))[0])
        self.contain = self._containment(grid)

    def index(self, values: np.ndarray) -> np.ndarray:
        """Index of the nearest lattice length of each squared distance (same shape)."""
        return np.searchsorted(self._mid, values).astype(self.dtype, copy=False)

    def _containment(self, grid: np.ndarray) -> np.ndarray:
        """contain[k, t]: index of the largest squared distance from a neighbour of kind t
        (bits z, y, x set where the neighbour is one step away) to a point of ball k (lengths
        below norms[k]). Ball k lies inside a neighbour's ball k' exactly when k' > contain[k, t]."""
        inside = grid <= self.norms[self.top] * (1 + _SAME)
        point_index = self.index(grid[inside])
        order = np.argsort(point_index, kind="stable")
        points = np.argwhere(inside)[order]
        point_index = point_index[order]
        # Points of ball k are those with index < k: the first last[k] + 1 points in this order.
        last = np.searchsorted(point_index, np.arange(self.top + 1), side="left") - 1
        contain = np.full((self.top + 1, 8), -1, dtype=np.int64)
        for kind in range(1, 8):
            step = ((kind >> 2) & 1, (kind >> 1) & 1, kind & 1)
            # The ball is symmetric, so the farthest point from a neighbour lies on the far side.
            far = sum(((points[:, i] + step[i]) * self.spacing[i]) ** 2 for i in range(3))
            farthest = np.maximum.accumulate(far)
            found = last >= 0
            contain[found, kind] = self.index(farthest[last[found]])
        return contain

    def thickness_um(self, unit_um: float) -> np.ndarray:
        """Local thickness (diameter, um) of each index: 2 sqrt(norms) in um."""
        return 2.0 * np.sqrt(self.norms) * unit_um


# ----------------------------------------------------------------------------------------------
# One slab


def _ridge(k: np.ndarray, lattice: Lattice, c0: int, c1: int) -> np.ndarray:
    """Centres (bool, slices c0..c1-1 of `k`) whose ball no neighbour's ball contains."""
    padded = np.pad(k[max(0, c0 - 1):c1 + 1], ((1 if c0 == 0 else 0, 1 if c1 == k.shape[0] else 0),
                                                (1, 1), (1, 1)))
    n = c1 - c0
    centres = np.empty((n, *k.shape[1:]), dtype=bool)
    # Per kind of neighbour, the table as one contiguous column in the lattice's index type.
    columns = [np.ascontiguousarray(np.maximum(lattice.contain[:, kind], 0).astype(lattice.dtype))
               for kind in range(8)]
    step = max(1, _RIDGE_BLOCK // (k.shape[1] * k.shape[2]))
    for z in range(0, n, step):
        m = min(step, n - z)
        core = padded[1 + z:1 + z + m, 1:-1, 1:-1]
        dropped = np.zeros(core.shape, dtype=bool)
        for kind in range(1, 8):
            limit = columns[kind].take(core)
            dz, dy, dx = (kind >> 2) & 1, (kind >> 1) & 1, kind & 1
            for sz in {-dz, dz}:
                for sy in {-dy, dy}:
                    for sx in {-dx, dx}:
                        neighbour = padded[1 + z + sz:1 + z + sz + m, 1 + sy:padded.shape[1] - 1 + sy,
                                           1 + sx:padded.shape[2] - 1 + sx]
                        dropped |= neighbour > limit
        np.greater(core, 0, out=centres[z:z + m])
        centres[z:z + m] &= ~dropped
    return centres


def _split(ks: np.ndarray, lattice: Lattice) -> int:
    """How many of the largest centres (ks sorted descending) to paint one by one, the rest
    offset by offset: whichever the cost model finds cheaper."""
    a = lattice.spacing
    cell = a[0] * a[1] * a[2]
    radius3 = lattice.norms[ks.astype(np.int64)] ** 1.5 / cell
    ball = 4.0 / 3.0 * math.pi * radius3
    box = 8.0 * radius3 + 1
    # Splitting after the first i centres: those i one by one, offsets of the (i+1)-th ball.
    head = np.concatenate(([0.0], np.cumsum(_CALL_S * 5 + box * _BOX_VOXEL_S)))
    tail_voxels = np.concatenate((np.cumsum(ball[::-1])[::-1], [0.0]))
    offsets = np.concatenate((ball, [0.0]))
    cost = head + offsets * _CALL_S + tail_voxels * _RANDOM_VOXEL_S
    return int(np.argmin(cost))


def _paint(k: np.ndarray, centres: np.ndarray, c0: int, lattice: Lattice) -> tuple[np.ndarray, int]:
    """Sphere fitting: the largest index whose ball covers each voxel (0: none).

    Returns the painted array, covering slices c0 - pad .. of `k`, and pad.
    """
    cz, cy, cx = np.nonzero(centres)
    ck = k[c0 + cz, cy, cx]
    top = int(ck.max()) if ck.size else 0
    radius = math.sqrt(lattice.norms[top])
    pad = [int(radius / a) + 1 for a in lattice.spacing]
    shape = (centres.shape[0] + 2 * pad[0], centres.shape[1] + 2 * pad[1],
             centres.shape[2] + 2 * pad[2])
    out = np.zeros(shape, dtype=lattice.dtype)
    if not ck.size:
        return out, pad[0]
    plane, row = shape[1] * shape[2], shape[2]
    flat = (cz + pad[0]) * plane + (cy + pad[1]) * row + (cx + pad[2])
    order = np.lexsort((flat, -ck.astype(np.int64)))  # largest first; in memory order within
    flat, ck = flat[order], ck[order]
    many = _split(ck, lattice)
    _paint_boxes(out, flat[:many], ck[:many], lattice, pad)
    _paint_offsets(out, flat[many:], ck[many:], lattice)
    return out, pad[0]


def _paint_offsets(out: np.ndarray, flat: np.ndarray, ks: np.ndarray, lattice: Lattice) -> None:
    """For each offset of the largest ball, the centres whose ball holds it (a prefix of `ks`,
    sorted descending) raise the voxel at that offset to their index."""
    if not ks.size:
        return
    values = out.reshape(-1)
    plane, row = out.shape[1] * out.shape[2], out.shape[2]
    rank = -ks.astype(np.int64)  # ascending, for searchsorted
    top = int(ks[0])
    radius = math.sqrt(lattice.norms[top])
    az, ay, ax = lattice.spacing
    hz, hy, hx = (int(radius / a) + 1 for a in lattice.spacing)
    oy = np.arange(-hy, hy + 1)
    ox = np.arange(-hx, hx + 1)
    disc = ((oy * ay) ** 2)[:, None] + ((ox * ax) ** 2)[None, :]
    index = np.empty(ks.size, dtype=np.int64)
    current = np.empty(ks.size, dtype=out.dtype)
    for oz in range(-hz, hz + 1):
        lengths = lattice.index((oz * az) ** 2 + disc)
        yy, xx = np.nonzero(lengths < top)
        counts = np.searchsorted(rank, -lengths[yy, xx].astype(np.int64), side="left")
        shifts = oz * plane + oy[yy] * row + ox[xx]
        for shift, count in zip(shifts.tolist(), counts.tolist()):
            if not count:
                continue
            idx, cur = index[:count], current[:count]
            np.add(flat[:count], shift, out=idx)
            np.take(values, idx, out=cur)
            np.maximum(cur, ks[:count], out=cur)
            values[idx] = cur


def _paint_boxes(out: np.ndarray, flat: np.ndarray, ks: np.ndarray, lattice: Lattice,
                 pad: list[int]) -> None:
    """Paint the largest balls one centre at a time, over the box around each."""
    if not ks.size:
        return
    hz, hy, hx = pad
    axes = [(np.arange(-h, h + 1) * a) ** 2 for h, a in zip(pad, lattice.spacing)]
    grid = lattice.index(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    plane, row = out.shape[1] * out.shape[2], out.shape[2]
    templates: dict[int, tuple[tuple[int, int, int], np.ndarray]] = {}
    for f, k in zip(flat.tolist(), ks.tolist()):
        if k not in templates:
            radius = math.sqrt(lattice.norms[k])
            rz, ry, rx = (int(radius / a) + 1 for a in lattice.spacing)
            sub = grid[hz - rz:hz + rz + 1, hy - ry:hy + ry + 1, hx - rx:hx + rx + 1]
            templates = templates if len(templates) < 64 else {}
            templates[k] = ((rz, ry, rx), np.where(sub < k, k, 0).astype(out.dtype))
        (rz, ry, rx), template = templates[k]
        z, rest = divmod(f, plane)
        y, x = divmod(rest, row)
        box = out[z - rz:z + rz + 1, y - ry:y + ry + 1, x - rx:x + rx + 1]
        np.maximum(box, template, out=box)


def _distances(phase: np.ndarray, spacing: tuple[float, float, float], threads: int) -> np.ndarray:
    """Squared distance (units^2) of each structure voxel to the nearest voxel outside it (0
    outside; inf where the array holds no voxel outside the structure)."""
    return edt.edtsq(np.ascontiguousarray(phase, dtype=np.uint8), anisotropy=spacing,
                     black_border=False, parallel=max(1, threads))


def _indices(d2: np.ndarray, lattice: Lattice) -> np.ndarray:
    """Lattice index of every squared distance, in blocks (searchsorted widens to float64)."""
    k = np.empty(d2.shape, dtype=lattice.dtype)
    flat_in, flat_out = d2.reshape(-1), k.reshape(-1)
    for start in range(0, flat_in.size, _SNAP_BLOCK):
        flat_out[start:start + _SNAP_BLOCK] = lattice.index(flat_in[start:start + _SNAP_BLOCK])
    np.minimum(k, lattice.top, out=k)  # only voxels outside the trusted region reach past it
    return k


# ----------------------------------------------------------------------------------------------
# Whole volumes, in slabs


@dataclass(frozen=True)
class ThicknessSlab:
    """The local thickness of slices z0..z1-1 as indices into lattice.norms (0 outside the
    structure): thickness = 2 sqrt(lattice.norms[index]) units."""

    z0: int
    z1: int
    index: np.ndarray
    lattice: Lattice


@dataclass(frozen=True)
class SlabDone:
    """One slab of a pass finished (for progress)."""

    pass_name: str


def largest_norm(read: PhaseReader, depth: int, spacing: tuple[float, float, float], slab: int,
                 threads: int) -> Generator[SlabDone, None, float]:
    """The largest squared distance (units^2) of the structure to its outside, slab by slab.

    Returns 0.0 for an empty structure and inf when there is no voxel outside it at all.
    """
    az = spacing[0]
    margin = _FIRST_MARGIN
    best = 0.0
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        while True:
            a, b = max(0, z0 - margin), min(depth, z1 + margin)
            d2 = _distances(read(a, b), spacing, threads)[z0 - a:z1 - a]
            # Trusted where no hidden voxel beyond a cut face could be closer.
            z = np.arange(z0, z1)
            reach = np.full(z.shape, np.inf)
            if a > 0:
                reach = np.minimum(reach, (z - a + 1) * az)
            if b < depth:
                reach = np.minimum(reach, (b - z) * az)
            worst = d2.reshape(d2.shape[0], -1).max(axis=1) if d2.size else np.zeros(0)
            if np.all(worst <= reach ** 2) or (a == 0 and b == depth):
                break
            margin *= 2
        if worst.size:
            best = max(best, float(worst.max()))
        yield SlabDone("radius")
    return best


def thickness_slabs(read: PhaseReader, depth: int, spacing: tuple[float, float, float], slab: int,
                    threads: int, lattice: Lattice | None = None,
                    ) -> Generator[ThicknessSlab | SlabDone, None, Lattice | None]:
    """Local thickness of a structure, slab by slab, as lattice indices.

    Args:
        read: the structure of slices z0..z1-1.
        depth: number of slices.
        spacing: voxel edges (z, y, x) in units of the smallest one.
        slab: slices per slab; >= depth processes the volume in one piece.
        threads: threads of the distance transform.
        lattice: built from a first pass (largest_norm) when slabbing; None in one piece.

    Yields ThicknessSlab for consecutive slabs (and SlabDone after each). Returns the Lattice
    (its norms give each index its thickness), or None when the structure is empty or has no
    voxel outside it (thickness undefined).
    """
    if slab >= depth:
        phase = read(0, depth)
        d2 = _distances(phase, spacing, threads)
        top = float(d2.max()) if d2.size else 0.0
        if top == 0.0 or not math.isfinite(top):
            yield SlabDone("thickness")
            return None
        lattice = Lattice(spacing, top)
        k = _indices(d2, lattice)
        del d2
        painted, pad = _paint(k, _ridge(k, lattice, 0, depth), 0, lattice)
        yield ThicknessSlab(0, depth, _core(painted, pad, 0, depth, k.shape), lattice)
        yield SlabDone("thickness")
        return lattice
    if lattice is None:
        raise ValueError("slab processing needs the lattice of a first pass (largest_norm)")
    reach = int(math.sqrt(lattice.norms[lattice.top]) / spacing[0]) + 1
    margin = 2 * reach + 1
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        a, b = max(0, z0 - margin), min(depth, z1 + margin)
        k = _indices(_distances(read(a, b), spacing, threads), lattice)
        c0, c1 = max(a, z0 - reach), min(b, z1 + reach)  # centres that can reach the slab
        painted, pad = _paint(k, _ridge(k, lattice, c0 - a, c1 - a), c0 - a, lattice)
        yield ThicknessSlab(z0, z1, _core(painted, pad, z0 - c0, z1 - c0, k.shape), lattice)
        yield SlabDone("thickness")
    return lattice


def _core(painted: np.ndarray, pad_z: int, s0: int, s1: int, shape: tuple[int, ...]) -> np.ndarray:
    """Slices s0..s1-1 (relative to the first centre slice) of a painted array, without padding."""
    py = (painted.shape[1] - shape[1]) // 2
    px = (painted.shape[2] - shape[2]) // 2
    return np.ascontiguousarray(painted[pad_z + s0:pad_z + s1, py:py + shape[1], px:px + shape[2]])

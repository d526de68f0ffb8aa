"""Bone morphometry on closed-form shapes written to TIFF: balls, pores, rod lattices, tubes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import tifffile

import bone_apps.cli as cli
from bone_apps.core.io.volume import VoxelSize, open_volume
from bone_apps.core.io.writer import write_volume
from bone_apps.core.measure import thickness
from bone_apps.core.measure.euler import euler_eighths
from bone_apps.core.measure.morphometry import MeasureOptions, measure

KEYS = ("label", "name", "BV/TV", "TV", "BV", "BS/BV", "Tb.Th", "Tb.Th.SD", "Tb.Sp", "Tb.Sp.SD",
        "Tb.N", "Conn", "Conn.D")


@pytest.fixture
def bone():
    """`bone` in-process."""
    return cli.main


def offsets(shape, centre, spacing=(1.0, 1.0, 1.0)):
    """Physical offsets (z, y, x) of every voxel centre from `centre` (in voxels)."""
    grid = np.indices(shape).astype(np.float64)
    return [(grid[i] - centre[i]) * spacing[i] for i in range(3)]


def ball(radius: float, margin: int = 4) -> np.ndarray:
    """Voxel centres within `radius` of a voxel centre: a digital ball of diameter 2 * radius."""
    n = 2 * int(radius) + 1 + 2 * margin
    z, y, x = offsets((n, n, n), (n // 2,) * 3)
    return (z * z + y * y + x * x <= radius * radius).astype(np.uint8)


def rod_lattice(nodes: tuple[int, int, int], step: int = 8, rod: int = 3, margin: int = 3):
    """Rods along every edge of a grid graph, enclosed in the volume; returns (mask, loops)."""
    shape = tuple((k - 1) * step + rod + 2 * margin for k in nodes)
    mask = np.zeros(shape, dtype=np.uint8)
    pos = [[margin + i * step for i in range(k)] for k in nodes]
    ends = [p[-1] + rod for p in pos]
    for z in pos[0]:
        for y in pos[1]:
            mask[z:z + rod, y:y + rod, margin:ends[2]] = 1
        for x in pos[2]:
            mask[z:z + rod, margin:ends[1], x:x + rod] = 1
    for y in pos[1]:
        for x in pos[2]:
            mask[margin:ends[0], y:y + rod, x:x + rod] = 1
    a, b, c = nodes
    vertices = a * b * c
    edges = (a - 1) * b * c + a * (b - 1) * c + a * b * (c - 1)
    return mask, edges - vertices + 1


def trabecular(shape, seed: int) -> np.ndarray:
    """A smoothed random field thresholded into a plate-and-rod structure (labels 1 and 2)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[np.abs(field) < np.quantile(np.abs(field), 0.3)] = 1
    labels[field > np.quantile(field, 0.9)] = 2
    return labels


# ----------------------------------------------------------------------------------------------
# Local thickness against its definition


def brute_force_thickness(structure: np.ndarray, spacing) -> np.ndarray:
    """Hildebrand & Rueegsegger by the letter: every voxel's ball, painted with its diameter."""
    from scipy import ndimage

    # Outside the image is not background: pad with structure far enough to change nothing.
    pad = max(structure.shape)
    d = ndimage.distance_transform_edt(np.pad(structure, pad, constant_values=1), sampling=spacing)
    d = d[pad:-pad, pad:-pad, pad:-pad]
    out = np.zeros(structure.shape)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(structure.shape, spacing)],
                                indexing="ij"), axis=-1)
    for centre in np.argwhere(structure):
        r = d[tuple(centre)]
        inside = ((grid - centre * np.asarray(spacing)) ** 2).sum(-1) < r * r * (1 - 1e-9)
        np.maximum(out, np.where(inside, 2 * r, 0.0), out=out)
    return out


def thickness_map(structure: np.ndarray, spacing, slab: int) -> np.ndarray:
    def read(a, b):
        return structure[a:b]

    depth = structure.shape[0]
    lattice = None
    if slab < depth:
        job = thickness.largest_norm(read, depth, spacing, slab, 2)
        while True:
            try:
                next(job)
            except StopIteration as done:
                lattice = thickness.Lattice(spacing, done.value)
                break
    out = np.zeros(structure.shape)
    for item in thickness.thickness_slabs(read, depth, spacing, slab, 2, lattice):
        if isinstance(item, thickness.ThicknessSlab):
            values = 2 * np.sqrt(item.lattice.norms)
            values[0] = 0
            out[item.z0:item.z1] = values[item.index]
    return out


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.0, 1.0), (1.3, 1.0, 0.7)])
def test_local_thickness_is_the_largest_ball_containing_each_voxel(spacing):
    structure = trabecular((14, 16, 18), seed=1) == 1
    expected = brute_force_thickness(structure, spacing)
    for slab in (100, 4):
        np.testing.assert_allclose(thickness_map(structure, spacing, slab), expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Closed-form shapes


def test_ball_reads_its_diameter_and_its_surface(tmp_path):
    mask = ball(10)  # diameter 20 voxels of 10 um: 0.2 mm
    write_volume(tmp_path / "ball.tif", mask, voxel_size=VoxelSize(10, 10, 10))
    result = measure(tmp_path / "ball.tif")
    values = result.label(1).values()
    voxels = int(mask.sum())
    assert values["BV"] == pytest.approx(voxels * 1e-6, rel=1e-12)
    assert values["BV/TV"] == voxels / mask.size
    assert values["TV"] == pytest.approx(mask.size * 1e-6, rel=1e-12)
    assert values["Tb.Th"] == pytest.approx(0.2, rel=0.03)
    # Marching cubes on a digital ball reads about 9 % above the smooth ball's 6 / D.
    assert 1.0 < values["BS/BV"] / (6 / 0.2) < 1.10
    assert values["Conn"] == 0.0  # one piece, no loop
    assert values["Tb.N"] == pytest.approx(1 / (values["Tb.Th"] + values["Tb.Sp"]))
    histogram = result.label(1).thickness.histogram()
    assert sum(histogram["counts"]) == voxels
    assert len(histogram["edges_mm"]) == len(histogram["counts"]) + 1


def test_enclosed_spherical_pores_read_their_diameter_as_spacing(tmp_path):
    mask = np.ones((48, 48, 48), dtype=np.uint8)
    centres = [(12, 12, 12), (12, 34, 30), (34, 14, 33), (33, 33, 12)]
    for centre in centres:
        z, y, x = offsets(mask.shape, centre)
        mask[z * z + y * y + x * x <= 36] = 0  # pores of diameter 12 voxels: 0.12 mm
    write_volume(tmp_path / "pores.tif", mask, voxel_size=VoxelSize(10, 10, 10))
    values = measure(tmp_path / "pores.tif").label(1).values()
    assert values["Tb.Sp"] == pytest.approx(0.12, rel=0.03)
    # A solid filling its box adds nothing to the Euler characteristic of the solid it was cut
    # from; each enclosed cavity adds one, so Conn = 1 - cavities.
    assert values["Conn"] == 1 - len(centres)


def test_enclosed_rod_lattice_has_one_connection_per_independent_loop(tmp_path):
    mask, loops = rod_lattice((3, 4, 2))
    write_volume(tmp_path / "lattice.tif", mask, voxel_size=VoxelSize(10, 10, 10))
    for slab in (None, 4):
        values = measure(tmp_path / "lattice.tif", MeasureOptions(slab_slices=slab)).label(1).values()
        assert values["Conn"] == loops == 23
        assert values["Conn.D"] == pytest.approx(loops / (mask.size * 1e-6))


def test_tube_gives_cortical_thickness_and_areas(tmp_path):
    z, y, x = offsets((12, 41, 41), (0, 20, 20))
    radius2 = y * y + x * x
    mask = ((radius2 <= 14 ** 2) & (radius2 > 8 ** 2)).astype(np.uint8)  # wall 6 voxels of 20 um
    write_volume(tmp_path / "tube.tif", mask, voxel_size=VoxelSize(20, 20, 20))
    result = measure(tmp_path / "tube.tif", MeasureOptions(class_names=("background", "cortical")))
    values = result.label(1).values()
    pixel = 0.02 ** 2
    assert values["Ct.Th"] == pytest.approx(0.12, rel=0.05)
    assert values["Tt.Ar"] == pytest.approx(np.count_nonzero(radius2[0] <= 14 ** 2) * pixel)
    assert values["Ct.Ar"] == pytest.approx(np.count_nonzero(mask[0]) * pixel)
    assert values["Ma.Ar"] == pytest.approx(np.count_nonzero(radius2[0] <= 8 ** 2) * pixel)
    assert values["Tt.Ar"] == pytest.approx(math.pi * 0.28 ** 2, rel=0.02)
    assert values["Ct.Ar/Tt.Ar"] == pytest.approx(values["Ct.Ar"] / values["Tt.Ar"])
    slices = result.label(1).to_dict()["per_slice"]
    assert slices["z"] == list(range(12)) and len(slices["Ma.Ar"]) == 12
    # The same label chosen by number instead of by name.
    again = measure(tmp_path / "tube.tif", MeasureOptions(cortical=(1,))).label(1).values()
    assert again["Ct.Th"] == values["Ct.Th"]


def test_halving_the_voxel_size_halves_every_length(tmp_path):
    mask = trabecular((24, 26, 28), seed=2)
    write_volume(tmp_path / "trab.tif", mask)
    coarse = measure(tmp_path / "trab.tif", MeasureOptions(voxel_size_um=(10.0, 10.0, 10.0)))
    fine = measure(tmp_path / "trab.tif", MeasureOptions(voxel_size_um=(5.0, 5.0, 5.0)))
    for label in (1, 2):
        a, b = coarse.label(label).values(), fine.label(label).values()
        for key in ("Tb.Th", "Tb.Th.SD", "Tb.Sp", "Tb.Sp.SD"):
            assert b[key] == pytest.approx(a[key] / 2, rel=1e-12)
        assert b["BS/BV"] == pytest.approx(2 * a["BS/BV"], rel=1e-6)
        assert b["Tb.N"] == pytest.approx(2 * a["Tb.N"], rel=1e-12)
        assert b["TV"] == pytest.approx(a["TV"] / 8, rel=1e-12)
        assert b["Conn.D"] == pytest.approx(8 * a["Conn.D"], rel=1e-12)
        assert b["BV/TV"] == a["BV/TV"] and b["Conn"] == a["Conn"]


def test_anisotropic_voxels_read_from_the_file(tmp_path):
    # The same physical ball (radius 100 um) sampled with 20 x 10 x 10 um and 10 um voxels.
    z, y, x = offsets((21, 41, 41), (10, 20, 20), (20.0, 10.0, 10.0))
    coarse = (z * z + y * y + x * x <= 100 ** 2).astype(np.uint8)
    write_volume(tmp_path / "aniso.tif", coarse, voxel_size=VoxelSize(20, 10, 10))
    write_volume(tmp_path / "iso.tif", ball(10), voxel_size=VoxelSize(10, 10, 10))
    result = measure(tmp_path / "aniso.tif")
    assert result.voxel_size_um == (20.0, 10.0, 10.0) and result.voxel_size_from == "file"
    values = result.label(1).values()
    iso = measure(tmp_path / "iso.tif").label(1).values()
    assert values["Tb.Th"] == pytest.approx(0.2, rel=0.03)
    assert values["Tb.Th"] == pytest.approx(iso["Tb.Th"], rel=0.02)
    assert values["BV"] == pytest.approx(4 / 3 * math.pi * 0.1 ** 3, rel=0.03)
    assert values["BS/BV"] == pytest.approx(6 / 0.2, rel=0.15)


def test_slab_path_gives_the_numbers_and_maps_of_the_whole_volume(tmp_path):
    mask = trabecular((30, 28, 26), seed=3)
    z, y, x = offsets(mask.shape, (15, 13, 12))
    roi = (z * z + y * y + x * x <= 12 ** 2).astype(np.uint8)
    write_volume(tmp_path / "trab", mask, voxel_size=VoxelSize(12, 10, 9))  # a folder of slices
    write_volume(tmp_path / "roi.tif", roi)
    whole = measure(tmp_path / "trab", MeasureOptions(roi=tmp_path / "roi.tif"), maps=tmp_path / "a")
    slabs = measure(tmp_path / "trab", MeasureOptions(roi=tmp_path / "roi.tif", slab_slices=4),
                    maps=tmp_path / "b")
    assert whole.label(1).tv_voxels == int(roi.sum())
    for a, b in zip(whole.to_dict()["labels"], slabs.to_dict()["labels"]):
        for key, value in a.items():
            if key in ("BS", "BS/BV"):  # float32 mesh coordinates, offset per slab
                assert b[key] == pytest.approx(value, rel=1e-6)
            else:
                assert b[key] == value, key
    assert len(whole.maps) == 4
    for name in ("1_label_1_Tb.Th.tif", "2_label_2_Tb.Sp.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "a" / name),
                                      tifffile.imread(tmp_path / "b" / name))


def test_a_stopped_measurement_raises_cancelled(tmp_path):
    import threading

    from bone_apps.core.errors import Cancelled
    from bone_apps.core.measure.morphometry import measure_stacks

    write_volume(tmp_path / "ball.tif", ball(4), voxel_size=VoxelSize(5, 5, 5))
    stop = threading.Event()
    job = measure_stacks(tmp_path / "ball.tif", MeasureOptions(slab_slices=4), stop=stop)
    first = next(job)
    assert first.done == 0 and first.stage == "counting"
    stop.set()
    with pytest.raises(Cancelled):
        next(job)


# ----------------------------------------------------------------------------------------------
# Connectivity against scikit-image and BoneJ's edge correction


def delta_chi(structure: np.ndarray) -> float:
    padded = np.zeros((structure.shape[0] + 2, *structure.shape[1:]), dtype=bool)
    padded[1:-1] = structure
    region = np.zeros_like(padded)
    region[1:-1] = True
    return euler_eighths(padded, region, last=True) / 8


def bonej_delta_chi(structure: np.ndarray) -> float:
    """chi - (chi2 / 2 + chi1 / 4 + chi0 / 8), BoneJ's Connectivity, from the stack's boundary."""
    from skimage.measure import euler_number

    s = structure.astype(bool)
    chi = euler_number(np.pad(s, 1), connectivity=3)
    ends = (0, -1)
    faces = [np.take(s, e, axis=a) for a in range(3) for e in ends]
    edges = [s[:, j, k] for j in ends for k in ends] + [s[i, :, k] for i in ends for k in ends] + \
            [s[i, j, :] for i in ends for j in ends]
    corners = sum(int(s[i, j, k]) for i in ends for j in ends for k in ends)

    def runs(line):
        return int(np.count_nonzero(np.diff(np.concatenate(([0], line.astype(int)))) == 1))

    chi_faces = sum(euler_number(np.pad(f, 1), connectivity=2) for f in faces) \
        - sum(runs(e) for e in edges) + corners
    chi_edges = sum(runs(e) for e in edges) - 2 * corners
    return chi - (chi_faces / 2 + chi_edges / 4 + corners / 8)


def test_euler_characteristic_matches_scikit_image_and_bonej():
    from skimage.measure import euler_number

    for seed in range(4):
        structure = trabecular((14, 15, 16), seed) == 1
        enclosed = np.pad(structure, 1)
        assert delta_chi(enclosed) == euler_number(enclosed, connectivity=3)
        assert delta_chi(structure) == pytest.approx(bonej_delta_chi(structure), abs=1e-12)
    rod = np.zeros((10, 12, 12), dtype=bool)
    rod[:, 4:8, 4:8] = True  # a rod through the stack adds nothing: Conn = 1
    assert delta_chi(rod) == 0.0


# ----------------------------------------------------------------------------------------------
# The command line


def test_cli_writes_json_csv_and_maps(tmp_path, bone, capsys):
    mask = np.zeros((20, 30, 30), dtype=np.uint8)
    mask[3:17, 5:25, 5:25] = 1
    mask[8:12, 10:20, 10:20] = 2
    write_volume(tmp_path / "mask.tif", mask)
    code = bone(["measure", str(tmp_path / "mask.tif"), "--voxel-size", "8", "--class-names",
                 "background,bone,cortical", "--json", str(tmp_path / "m.json"), "--csv",
                 str(tmp_path / "m.csv"), "--maps", str(tmp_path / "maps")])
    assert code == 0
    out = capsys.readouterr().out
    assert "Tb.Th" in out and "1 bone" in out and "2 cortical" in out
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["voxel_size_um"] == {"z": 8.0, "y": 8.0, "x": 8.0}
    assert data["units"]["Tb.Th"] == "mm" and data["units"]["Conn.D"] == "1/mm^3"
    bone_entry, cortical_entry = data["labels"]
    for key in KEYS:
        assert key in bone_entry
    assert bone_entry["name"] == "bone" and bone_entry["label"] == 1
    assert "Ct.Th" not in bone_entry and cortical_entry["Ct.Th"] == cortical_entry["Tb.Th"]
    assert bone_entry["BV"] == pytest.approx(np.count_nonzero(mask == 1) * 0.008 ** 3)
    assert set(bone_entry["Tb.Th.histogram"]) == {"edges_mm", "counts"}
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [row["name"] for row in rows] == ["bone", "cortical"]
    assert float(rows[0]["Tb.Th"]) == pytest.approx(bone_entry["Tb.Th"])
    thick = open_volume(tmp_path / "maps" / "1_bone_Tb.Th.tif")
    assert thick.dtype == np.float32 and thick.shape == mask.shape
    assert thick.voxel_size.x == pytest.approx(8.0)
    values = thick.read_slab(0, 20)
    assert values[mask == 1].mean() == pytest.approx(bone_entry["Tb.Th"], rel=1e-5)
    assert np.all(values[mask != 1] == 0)
    # Again: every output exists, so it takes --overwrite (and they are ours, so it may).
    again = ["measure", str(tmp_path / "mask.tif"), "--voxel-size", "8", "--label", "2", "--json",
             str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv"), "--maps", str(tmp_path / "maps")]
    assert bone(again) == 2
    assert bone([*again, "--overwrite"]) == 0
    assert [e["label"] for e in json.loads((tmp_path / "m.json").read_text())["labels"]] == [2]


def test_missing_voxel_size_exits_2_with_one_sentence(tmp_path, bone, capsys):
    tifffile.imwrite(tmp_path / "plain.tif", np.ones((5, 8, 8), dtype=np.uint8), photometric="minisblack")
    assert bone(["measure", str(tmp_path / "plain.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.count(". ") == 0 and err.endswith(".")
    assert str(tmp_path / "plain.tif") in err and "--voxel-size" in err
    assert bone(["measure", str(tmp_path / "plain.tif"), "--voxel-size", "1", "2"]) == 2
    assert "--voxel-size" in capsys.readouterr().err


def test_json_onto_a_users_file_is_refused(tmp_path, bone, capsys):
    write_volume(tmp_path / "mask.tif", ball(3), voxel_size=VoxelSize(5, 5, 5))
    users = tmp_path / "notes.json"
    users.write_bytes(b'{"mine": true}\n')
    for extra in ([], ["--overwrite"]):
        assert bone(["measure", str(tmp_path / "mask.tif"), "--json", str(users), *extra]) == 2
        assert str(users) in capsys.readouterr().err
        assert users.read_bytes() == b'{"mine": true}\n'
    table = tmp_path / "table.csv"
    table.write_text("a,b\n1,2\n")
    assert bone(["measure", str(tmp_path / "mask.tif"), "--csv", str(table), "--overwrite"]) == 2
    assert table.read_text() == "a,b\n1,2\n"

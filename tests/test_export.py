"""`bone export`: a fitted model as ONNX and as a bioimage.io package, checked against PyTorch
and validated offline, and `bone predict --weights MODEL.onnx` running it with onnxruntime."""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from bone_apps.cli import main
from bone_apps.core.data.normalize import normalize
from bone_apps.core.export.bioimageio import PAPER
from bone_apps.core.export.bioimageio_check import check_package, preprocess, validate_package
from bone_apps.core.export.onnx import META_KEY, OPSET, OUTPUT_KEY, normalized_example
from bone_apps.core.export.sample import block_stats, sample_block
from bone_apps.core.io.volume import open_volume
from bone_apps.core.model.models import build_model, required_multiple, set_border_padding
from bone_apps.core.model.weights import load_weights, save_weights
from bone_apps.core.predict.segment import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_NAMES = ["background", "bone", "pores"]
KINDS = {  # dims -> (architecture, encoder, in_channels, context, patch_depth)
    "2.5d": ("Unet", "resnet18", 3, 1, 1),
    "3d": ("BasicUNet", "tiny", 1, 0, 16),
}


def make_weights(path: Path, dims: str) -> Path:
    """A randomly initialised model as new fits save it (replicated-edge padding)."""
    arch, encoder, channels, context, depth = KINDS[dims]
    torch.manual_seed(1)
    model = build_model(dims, arch, encoder, channels, 3, patch_depth=depth)
    meta = {"dims": dims, "arch": arch, "encoder": encoder, "in_channels": channels, "classes": 3,
            "class_names": CLASS_NAMES, "patch_size": 64, "context": context, "patch_depth": depth,
            "norm": "zscore", "required_multiple": required_multiple(model, dims), "padding": "replicate"}
    return save_weights(path, model, meta)


def scan_of(root: Path, k: int) -> Path:
    return root / "scans" / f"bone_{k:02d}"


def predict_labels(scan: Path, weights: Path, out: Path) -> np.ndarray:
    assert main(["predict", str(scan), "--weights", str(weights), "--out", str(out), "--device", "cpu"]) == 0
    volume = open_volume(out, role="mask")
    return volume.read_slab(0, volume.shape[0])


def input_axes(model: onnx.ModelProto) -> list:
    """The network input's axes: names where the size is free, sizes where it is fixed."""
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def fitted(sample_root, tmp_path_factory) -> Path:
    """A 2D U-Net fitted for one epoch by `bone fit` on two sample scans."""
    out = tmp_path_factory.mktemp("fit") / "run"
    pairs = []
    for k in (0, 1):
        pairs += ["--pair", str(scan_of(sample_root, k)), str(sample_root / "masks" / f"bone_{k:02d}")]
    assert main(["fit", *pairs, "--out", str(out), "--epochs", "1", "--patch", "64", "--batch", "4",
                 "--init", "random", "--workers", "0", "--stats-workers", "1", "--no-profile",
                 "--cache-dir", str(out.parent / "cache")]) == 0
    return out / "model.pth"


@pytest.fixture(scope="module")
def fitted_onnx(fitted, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(fitted), "--onnx", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def weights_3d(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("w3d") / "model3d.pth", "3d")


@pytest.fixture(scope="module")
def onnx_3d(weights_3d) -> Path:
    out = weights_3d.with_suffix(".onnx")
    assert main(["export", str(weights_3d), "--onnx", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def package_3d(weights_3d, sample_root) -> Path:
    """A bioimage.io package of the 3D model, written with the network unreachable."""
    package = weights_3d.parent / "model.zip"
    with pytest.MonkeyPatch.context() as patch:
        offline(patch)
        assert main(["export", str(weights_3d), "--bioimageio", str(package), "--sample",
                     str(scan_of(sample_root, 3)), "--author", "Ada Lovelace", "--name",
                     "Tiny bone model 3D"]) == 0
    return package


def test_onnx_of_a_fitted_model_carries_its_metadata_and_replicated_edges(
        fitted, fitted_onnx, sample_root):
    model = onnx.load(str(fitted_onnx))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[META_KEY]) == load_weights(fitted)[1]
    assert props[OUTPUT_KEY] == "logits" and props["written_by"].startswith("bone_apps")
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert input_axes(model) == ["batch", 1, "y", "x"]
    # Every convolution that pads pads with replicated edges, in PyTorch and in the ONNX graph.
    network, meta, spec = load_model(fitted)
    padded = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)]
    assert meta["padding"] == "replicate" and {m.padding_mode for m in padded} == {"replicate"}
    modes = [a.s for n in model.graph.node if n.op_type == "Pad" for a in n.attribute if a.name == "mode"]
    assert modes.count(b"edge") == len(padded) and not any(n.op_type == "Conv" and any(
        a.name == "pads" and any(a.ints) for a in n.attribute) for n in model.graph.node)
    # onnxruntime reproduces PyTorch on a scan the model never saw and at another batch and size;
    # the same parameters with zero padding give other logits at the border, so the agreement
    # is a test of the padding.
    x = normalized_example(sample_block(spec, meta, scan_of(sample_root, 2)), spec.norm)
    session = ort.InferenceSession(str(fitted_onnx), providers=["CPUExecutionProvider"])
    for inputs in (x, torch.randn(3, 1, 96, 128, generator=torch.Generator().manual_seed(0))):
        with torch.no_grad():
            expected = network(inputs).numpy()
        got = session.run(None, {"input": inputs.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    zeros = set_border_padding(copy.deepcopy(network), "zeros")
    with torch.no_grad():
        border = np.abs(zeros(x).numpy() - session.run(None, {"input": x.numpy()})[0])[..., 0, :]
    assert border.max() > 1e-2


def test_predict_with_the_onnx_writes_the_labels_of_the_pth(fitted, fitted_onnx, sample_root, tmp_path,
                                                            capsys):
    scan = scan_of(sample_root, 2)
    from_pth = predict_labels(scan, fitted, tmp_path / "pth")
    capsys.readouterr()
    from_onnx = predict_labels(scan, fitted_onnx, tmp_path / "onnx")
    # Probabilities differ by about 1e-6 (float32 sums in another order): a label could only
    # change where two classes, or the winner and the threshold, are that close; none are here.
    assert np.array_equal(from_onnx, from_pth)
    assert set(np.unique(from_pth)) >= {0, 1}  # after one epoch, the model finds bone at least
    assert "Unet with resnet18 encoder" in capsys.readouterr().out  # the report reads the .onnx's metadata


@pytest.mark.parametrize("dims", ["2.5d", "3d"])
def test_2_5d_and_3d_models_export_and_predict_alike(dims, weights_3d, onnx_3d, sample_root, tmp_path):
    if dims == "3d":
        weights, out = weights_3d, onnx_3d
    else:
        weights, out = make_weights(tmp_path / "m.pth", dims), tmp_path / "m.onnx"
        assert main(["export", str(weights), "--onnx", str(out)]) == 0
    expected = ["batch", 1, "z", "y", "x"] if dims == "3d" else ["batch", 3, "y", "x"]
    assert input_axes(onnx.load(str(out))) == expected
    scan = scan_of(sample_root, 3)
    assert np.array_equal(predict_labels(scan, out, tmp_path / "onnx"),
                          predict_labels(scan, weights, tmp_path / "pth"))


def offline(patch: pytest.MonkeyPatch) -> None:
    """No network: any connection or name lookup fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)
    patch.setattr(socket, "create_connection", refuse)


def test_bioimageio_package_validates_offline_and_reproduces_its_test_output(
        package_3d, weights_3d, sample_root, monkeypatch):
    offline(monkeypatch)
    package, scan = package_3d, scan_of(sample_root, 3)
    validation = validate_package(package)
    assert validation.status == "valid-format" and not validation.errors
    checks = check_package(package, "zscore")
    assert set(checks) == {"TorchScript", "onnxruntime"} and max(checks.values()) <= 1e-4
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        test_input = np.load(io.BytesIO(archive.read(rdf["inputs"][0]["test_tensor"]["source"])))
        test_output = np.load(io.BytesIO(archive.read(rdf["outputs"][0]["test_tensor"]["source"])))
        names = set(archive.namelist())
    assert rdf["name"] == "Tiny bone model 3D" and rdf["authors"] == [{"name": "Ada Lovelace"}]
    assert rdf["cite"][0]["doi"] == PAPER["doi"] and "Front. Bioinform." in rdf["cite"][0]["text"]
    assert set(rdf["weights"]) == {"torchscript", "onnx"} and rdf["weights"]["onnx"]["opset_version"] == OPSET
    assert {rdf["covers"][0]["source"], rdf["documentation"]["source"]} <= names
    assert [a.get("id", a["type"]) for a in rdf["outputs"][0]["axes"]] == ["batch", "channel", "z", "y", "x"]
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == CLASS_NAMES
    # The test input is the middle of the scan, and the preprocessing is the model's z-score
    # normalization (statistics of the input, clipped to +-10).
    _, meta = load_weights(weights_3d)
    spec = load_model(weights_3d)[2]
    assert np.array_equal(test_input, sample_block(spec, meta, scan))
    steps = [s for s in rdf["inputs"][0]["preprocessing"] if s["id"] != "ensure_dtype"]
    assert [s["id"] for s in steps] == ["zero_mean_unit_variance", "clip"]
    assert steps[1]["kwargs"] == {"min": -10.0, "max": 10.0}
    ours = normalize(test_input, block_stats(test_input), "zscore")
    assert np.abs(preprocess(test_input, "zscore") - ours).max() < 1e-5
    assert test_output.shape == (1, 3, *test_input.shape[2:])
    assert np.allclose(test_output.sum(axis=1), 1.0, atol=1e-5)


def test_the_packages_onnx_runs_in_bone_predict(package_3d, weights_3d, sample_root, tmp_path):
    """The package's network ends in a softmax; prediction gets the same labels from it."""
    inside = tmp_path / "from-package.onnx"
    with zipfile.ZipFile(package_3d) as archive:
        inside.write_bytes(archive.read("weights.onnx"))
    scan = scan_of(sample_root, 0)
    assert np.array_equal(predict_labels(scan, inside, tmp_path / "onnx"),
                          predict_labels(scan, weights_3d, tmp_path / "pth"))


def test_exports_never_replace_a_file_bone_apps_did_not_write(weights_3d, onnx_3d, tmp_path, capsys):
    for name in ("mine.onnx", "mine.zip"):
        theirs = tmp_path / name
        theirs.write_bytes(b"the user's own file")
        flag = "--onnx" if name.endswith(".onnx") else "--bioimageio"
        for extra in ([], ["--overwrite"]):
            assert main(["export", str(weights_3d), flag, str(theirs), *extra]) == 2
            assert name in one_line(capsys)
            assert theirs.read_bytes() == b"the user's own file"
    ours = tmp_path / "ours.onnx"
    shutil.copyfile(onnx_3d, ours)
    assert main(["export", str(weights_3d), "--onnx", str(ours)]) == 2
    assert "already exists" in one_line(capsys)
    assert main(["export", str(weights_3d), "--onnx", str(ours), "--overwrite"]) == 0
    # Both outputs are checked before either is written.
    assert main(["export", str(weights_3d), "--onnx", str(tmp_path / "new.onnx"),
                 "--bioimageio", str(tmp_path / "mine.zip")]) == 2
    assert sorted(os.listdir(tmp_path)) == ["mine.onnx", "mine.zip", "ours.onnx"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own ONNX exporter, for the foreign file
def test_bad_onnx_files_and_options_get_one_line(weights_3d, sample_root, tmp_path, capsys):
    scan = scan_of(sample_root, 0)
    random_bytes = tmp_path / "random.onnx"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model that bone export did not write
    with torch.no_grad():
        torch.onnx.export(torch.nn.Conv2d(1, 3, 3, padding=1), (torch.zeros(1, 1, 32, 32),), str(foreign),
                          dynamo=False)
    for bad, words in ((random_bytes, "not an ONNX model"), (empty, "empty"),
                       (foreign, "without bone_apps' metadata")):
        out = tmp_path / f"out-{bad.stem}"
        assert main(["predict", str(scan), "--weights", str(bad), "--out", str(out)]) == 2
        err = one_line(capsys)
        assert str(bad) in err and words in err
        assert not out.exists()
    assert main(["export", str(random_bytes), "--onnx", str(tmp_path / "again.onnx")]) == 2
    assert "export from the .pth" in one_line(capsys)
    for args, words in (([], "nothing to write"), (["--onnx", str(tmp_path / "x.pt")], "end in .onnx"),
                        (["--bioimageio", str(tmp_path / "x.zip"), "--license", "no-such-license"],
                         "license"),
                        (["--bioimageio", str(tmp_path / "y.zip"), "--name", "bad/name"], "name")):
        assert main(["export", str(weights_3d), *args]) == 2
        assert words in one_line(capsys)
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()


@pytest.mark.slow
def test_bioimageio_package_of_a_fitted_2d_model(fitted, sample_root, tmp_path, monkeypatch):
    offline(monkeypatch)
    package = tmp_path / "model2d.zip"
    assert main(["export", str(fitted), "--bioimageio", str(package), "--sample",
                 str(scan_of(sample_root, 2))]) == 0
    assert validate_package(package).status == "valid-format"
    assert max(check_package(package, "zscore").values()) <= 1e-4

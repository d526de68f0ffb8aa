"""Held-out quality benchmark: `bone fit` + `bone predict` with their defaults against a plain
hand-written smp loop, and the levers a demanding user would try, one at a time.

Data: `bone synth` phantoms (cortical shells, cavities wider than a patch, neighbouring bones,
trabeculae, growth plates, dim scans): FIT scans to fit (the last one validates) and HELD new
scans, drawn with another seed, that no fit ever sees. Every variant gets the same patch budget:
each training slice gives `patches-per-tile` patches of `patch` px per epoch, `epochs` epochs,
batch `batch`, CPU, random init, seed 42.

  plain   a hand-written loop: smp U-Net / ResNet-18, per-scan z-score, the same random patches
          with flips and 90-degree turns, cross-entropy, Adam 1e-3 with a cosine schedule;
          predicts whole slices at once.
  default bone fit / bone predict with their defaults (prediction settings from the weights).
  others  one option changed against `default` (see VARIANTS); `tta` refits nothing and
          predicts the default model with test-time flips.

Columns: validation mIoU on whole slices as the fit reports it, held-out mIoU (mean over the
held-out scans, all classes), the pores class on the held-out scans, held-out minus validation,
agreement of training-patch and 4x windows on the held-out scans, fit seconds, and the ratio of
held-out mIoU to the plain loop's in the same run.

Usage: python benchmarks/bench_heldout.py [--fit 7] [--held 6] [--shape 24 160 160]
           [--patch 64] [--batch 16] [--epochs 10] [--variants default plain ...]
           [--workdir /tmp/bench_heldout] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BONE = [shutil.which("bone", path=str(Path(sys.executable).parent)) or "bone"]

# name -> (extra `bone fit` options, extra `bone predict` options, what it tries)
VARIANTS: dict[str, tuple[list[str], list[str], str]] = {
    "default": ([], [], "bone_apps defaults"),
    "no-augment": (["--no-augment"], [], "no augmentation at all"),
    "context-2x": (["--patch", "{2p}", "--patches-per-tile", "1", "--batch", "{b4}"], [],
                   "2x larger patches, same pixels per epoch and per batch"),
    "2.5d": (["--dims", "2.5d", "--context", "1"], [], "2.5D: the slices above and below as channels"),
    "ce+jaccard": (["--loss", "ce+jaccard"], [], "cross-entropy + Jaccard loss"),
    "dice": (["--loss", "dice"], [], "Dice loss"),
    "lr-3e-3": (["--lr", "0.003"], [], "3x learning rate, same cosine schedule"),
    "constant-lr": (["--scheduler", "constant"], [], "no cosine decay"),
    "tta": ([], ["--tta"], "default model, test-time flips at prediction"),
    "easy": (["--easy"], [], "Easy mode: patch and batch chosen from the data (no --patch, --batch)"),
}
PLAIN_LR = 1e-3


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


def make_data(work: Path, fit: int, held: int, shape: list[int]) -> tuple[Path, Path]:
    data, new = work / "data", work / "held"
    if not data.exists():
        run([*BONE, "synth", str(data), "--scans", str(fit), "--seed", "11", "--shape", *map(str, shape)])
    if not new.exists():
        run([*BONE, "synth", str(new), "--scans", str(held), "--seed", "99", "--shape", *map(str, shape)])
    return data, new


def scan_ids(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "scans").iterdir() if not p.name.startswith("."))


def score(reference: Path, prediction: Path) -> tuple[float, float]:
    """(mIoU over the classes present, pores IoU) of one predicted label stack."""
    from bone_apps.core.score.scoring import compute_iou

    result = compute_iou(reference, prediction, num_classes=3, device="cpu")
    pores = result.classes[2].iou
    return float(result.mean_iou), float("nan") if pores is None else float(pores)


def agreement(a: Path, b: Path) -> float:
    from bone_apps.core.io.volume import open_volume

    va, vb = open_volume(a, role="mask"), open_volume(b, role="mask")
    same = total = 0
    for z in range(va.shape[0]):
        sa, sb = va.read_slice(z), vb.read_slice(z)
        same += int(np.count_nonzero(sa == sb))
        total += sa.size
    return same / total


def fit_bone(args, data: Path, run_dir: Path, extra: list[str]) -> float:
    ids = scan_ids(data)
    fill = {"{2p}": str(2 * args.patch), "{b4}": str(max(1, args.batch // 4))}
    extra = [fill.get(x, x) for x in extra]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    size = [] if "--easy" in extra else ["--patch", str(args.patch), "--batch", str(args.batch)]
    run([*BONE, "fit", "--data", str(data), "--out", str(run_dir), "--epochs", str(args.epochs),
         *size, "--device", "cpu", "--init", "random", "--seed", "42", "--val-scans", ids[-1], *extra])
    return time.perf_counter() - start


def predict_bone(weights: Path, scan: Path, out: Path, extra: list[str]) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run([*BONE, "predict", str(scan), "--weights", str(weights), "--out", str(out), "--device", "cpu",
         *extra])


# ----------------------------------------------------------------------------------------------
# The plain loop


def _zscored(path: Path) -> np.ndarray:
    from bone_apps.core.io.volume import open_volume

    volume = open_volume(path)
    array = volume.read_slab(0, volume.shape[0]).astype(np.float32)
    return (array - array.mean()) / max(float(array.std()), 1e-6)


def fit_plain(args, data: Path, run_dir: Path) -> float:
    """The hand-written loop; saves the model's state dict to run_dir/plain.pt."""
    import segmentation_models_pytorch as smp
    import torch

    from bone_apps.core.io.volume import open_volume

    torch.manual_seed(42)
    rng = np.random.default_rng(42)
    ids = scan_ids(data)[:-1]  # the same training scans as the bone fits (the last one validates)
    images = [_zscored(data / "scans" / i) for i in ids]
    masks = [open_volume(data / "masks" / i, role="mask").read_slab(0, images[k].shape[0]).astype(np.int64)
             for k, i in enumerate(ids)]
    tiles = [(s, z) for s in range(len(ids)) for z in range(images[s].shape[0])]
    per_tile, p = 4, args.patch
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=PLAIN_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        patches = []
        for s, z in tiles:
            _, h, w = images[s].shape
            for _ in range(per_tile):
                y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
                img, lab = images[s][z, y:y + p, x:x + p], masks[s][z, y:y + p, x:x + p]
                k = int(rng.integers(0, 4))
                img, lab = np.rot90(img, k), np.rot90(lab, k)
                if rng.random() < 0.5:
                    img, lab = img[:, ::-1], lab[:, ::-1]
                patches.append((img.copy(), lab.copy()))
        order = rng.permutation(len(patches))
        for b in range(0, len(order), args.batch):
            chosen = [patches[i] for i in order[b:b + args.batch]]
            x = torch.from_numpy(np.stack([c[0] for c in chosen])[:, None])
            y = torch.from_numpy(np.stack([c[1] for c in chosen]))
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / "plain.pt")
    return seconds


def predict_plain(run_dir: Path, scan: Path, out: Path) -> None:
    """Whole slices at once (padded by reflection to a multiple of 32), written as a TIFF stack."""
    import segmentation_models_pytorch as smp
    import tifffile
    import torch

    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3)
    model.load_state_dict(torch.load(run_dir / "plain.pt"))
    model.eval()
    image = _zscored(scan)
    _, h, w = image.shape
    ph, pw = -h % 32, -w % 32
    labels = np.zeros(image.shape, np.uint8)
    with torch.inference_mode():
        for z in range(image.shape[0]):
            plane = np.pad(image[z], ((0, ph), (0, pw)), mode="reflect")
            logits = model(torch.from_numpy(plane)[None, None])
            labels[z] = logits.argmax(1)[0, :h, :w].numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out.with_suffix(".tif"), labels)


# ----------------------------------------------------------------------------------------------


def evaluate(args, name: str, data: Path, held: Path, work: Path, rows: list[dict]) -> None:
    fit_options, predict_options, _ = VARIANTS.get(name, ([], [], ""))
    run_dir = work / "runs" / ("default" if name == "tta" else name)
    seconds = float("nan")
    if name == "plain":
        if not (args.reuse and (run_dir / "plain.pt").exists()):
            seconds = fit_plain(args, data, run_dir)
        val = float("nan")
    else:
        summary_file = run_dir / "summary.json"
        if not ((args.reuse or name == "tta") and summary_file.exists()):
            seconds = fit_bone(args, data, run_dir, fit_options)
        summary = json.loads(summary_file.read_text())
        val = float(summary["inference"]["val_iou"])
        if name != "tta" and seconds != seconds:  # reused: the fit's own wall time
            seconds = float(summary["times"]["wall_s"])
    scores, pores, agree = [], [], []
    for sid in scan_ids(held):
        out = work / "pred" / name / sid
        if name == "plain":
            predict_plain(run_dir, held / "scans" / sid, out)
            prediction = out.with_suffix(".tif")
        else:
            predict_bone(run_dir / "model.pth", held / "scans" / sid, out, predict_options)
            prediction = out
            if name in ("default", "no-augment"):
                small, large = out.with_name(sid + "_patch"), out.with_name(sid + "_4x")
                patch = int(2 * args.patch if name == "context-2x" else args.patch)
                predict_bone(run_dir / "model.pth", held / "scans" / sid, small,
                             ["--chunk", str(patch), "--overlap", "0.5", "--blend", "gaussian"])
                predict_bone(run_dir / "model.pth", held / "scans" / sid, large,
                             ["--chunk", str(4 * patch), "--overlap", "0.25", "--blend", "mean"])
                agree.append(agreement(small, large))
        miou, pore = score(held / "masks" / sid, prediction)
        scores.append(miou)
        pores.append(pore)
    rows.append({"variant": name, "val": val, "held": float(np.mean(scores)),
                 "worst": float(np.min(scores)), "pores": float(np.mean(pores)),
                 "agreement": float(np.mean(agree)) if agree else float("nan"), "seconds": seconds})
    print(f"  {name}: held-out {np.mean(scores):.4f} (worst {np.min(scores):.4f}), "
          f"validation {val:.4f}, {seconds:.0f} s", flush=True)


def table(rows: list[dict]) -> str:
    plain = next((r["held"] for r in rows if r["variant"] == "plain"), float("nan"))
    lines = ["| variant | val mIoU (slices) | held-out mIoU | worst scan | held-out pores | "
             "held - val | 1x/4x windows agree | fit s | held / plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = r["held"] - r["val"]
        lines.append(f"| {r['variant']} | {r['val']:.4f} | {r['held']:.4f} | {r['worst']:.4f} | "
                     f"{r['pores']:.4f} | {gap:+.4f} | {r['agreement']:.2%} | {r['seconds']:.0f} | "
                     f"{r['held'] / plain:.3f} |".replace("nan%", "-").replace("nan", "-"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", type=int, default=7, help="scans to fit (the last validates)")
    parser.add_argument("--held", type=int, default=6, help="held-out scans")
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 160, 160])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=["plain", *VARIANTS])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_heldout"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep fits already in the work folder (their own times are reported)")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data, held = make_data(work, args.fit, args.held, args.shape)
    print(f"{args.fit} scans to fit, {args.held} held out, {args.shape}; patch {args.patch}, "
          f"batch {args.batch}, {args.epochs} epochs, CPU", flush=True)
    rows: list[dict] = []
    for name in args.variants:
        if name != "plain" and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name}: use plain or {', '.join(VARIANTS)}")
        evaluate(args, name, data, held, work, rows)
    text = table(rows)
    print(text)
    (work / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

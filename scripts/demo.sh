#!/usr/bin/env bash
# The bone_apps demo: make sample scans, then score a mask against a perturbed copy of itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
bone=".venv/bin/bone"
out=demo-output
rm -rf "$out"
echo "== 1. Sample micro-CT scans with Bone-Pores masks"
$bone synth "$out/data" --scans 4 --shape 32 128 128 --seed 1
echo
echo "== 2. A perturbed copy of one mask (every fifth column of the second half set to background)"
.venv/bin/python - "$out" <<'PY'
import sys
from pathlib import Path
from bone_apps.core.volume import open_volume, write_volume
out = Path(sys.argv[1])
mask = open_volume(out / "data/masks/bone_03", role="mask")
labels = mask.read_slab(0, mask.shape[0])
labels[mask.shape[0] // 2:, :, ::5] = 0
write_volume(out / "perturbed_bone_03", labels, mask.slice_names, mask.voxel_size)
print(f"wrote {out / 'perturbed_bone_03'}")
PY
echo
echo "== 3. IoU of the perturbed mask against the original"
$bone iou "$out/data/masks/bone_03" "$out/perturbed_bone_03" \
  --class-names background,bone,pores --json "$out/iou.json"

#!/usr/bin/env bash
# Build the one-folder bundle dist/bone_apps/ (bone, bone-dlfit, bone-dlpred, bone-iou) and zip it
# (on macOS also dist/bone_apps.app, in a dmg). One command, from anywhere (Windows: build.ps1):
#
#   bash packaging/build.sh [--torch cpu|cuda|INDEX-URL] [--python PYTHON] [--fresh] [--no-archive]
#
#   --torch cpu        PyTorch's CPU wheels (https://download.pytorch.org/whl/cpu; the default):
#                      the small bundle. When that index cannot be reached, the build goes on with
#                      the torch pip installs by default and says so.
#   --torch cuda       the torch pip installs by default (PyPI: a CUDA build on Linux, CPU elsewhere).
#   --torch URL        torch and torchvision from that index (e.g. .../whl/cu128 on Windows).
#   --python PYTHON    the interpreter the build environment is made from (default python3/python).
#   --fresh            make the build environment anew.
#   --no-archive       leave out the zip/dmg.
#
# It builds in its own virtual environment, build/bundle-venv, from a normal install of this
# checkout: PyInstaller cannot see an editable install (pip install -e), and would build a bundle
# without bone_apps in it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
torch=cpu
python="${PYTHON:-}"
fresh=0
archive=1
while [ $# -gt 0 ]; do
    case "$1" in
        --torch) torch="$2"; shift 2 ;;
        --torch=*) torch="${1#*=}"; shift ;;
        --python) python="$2"; shift 2 ;;
        --python=*) python="${1#*=}"; shift ;;
        --fresh) fresh=1; shift ;;
        --no-archive) archive=0; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$python" ]; then
    python="$(command -v python3 || command -v python)"
fi

case "$(uname -s)" in
    Linux*) platform=linux ;;
    MINGW*|MSYS*|CYGWIN*) platform=windows ;;
    Darwin*) platform=macos ;;
    *) platform="$(uname -s)" ;;
esac

started=$(date +%s)
venv="$root/build/bundle-venv"
work="$root/build/pyinstaller"
mkdir -p "$work"
cd "$work"  # outside the checkout: its bone_apps folder must not shadow the installed one
if [ "$fresh" = 1 ]; then rm -rf "$venv"; fi
if [ ! -d "$venv" ]; then
    echo "== build environment: $venv (from $python)"
    "$python" -m venv "$venv"
fi
if [ "$platform" = windows ]; then vpy="$venv/Scripts/python.exe"; else vpy="$venv/bin/python"; fi

echo "== torch: $torch"
case "$torch" in
    cpu) index=https://download.pytorch.org/whl/cpu ;;
    cuda) index="" ;;
    http*|file:*) index="$torch" ;;
    *) echo "build.sh: --torch takes cpu, cuda or an index URL, not $torch" >&2; exit 2 ;;
esac
torch_source="pip's default torch"
reachable() {  # whether pip can reach an index (a quick look, instead of pip's long retries)
    "$vpy" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' "$1" \
        >/dev/null 2>&1
}
if [ -n "$index" ]; then
    if reachable "$index" && "$vpy" -m pip install --retries 2 torch torchvision --index-url "$index"; then
        torch_source="$index"
    else
        echo "WARNING: torch could not be installed from $index; building with pip's default torch" >&2
        echo "WARNING: (on Linux that is the CUDA build: a bundle of several GB)" >&2
    fi
fi
# bone_apps itself, not editable; [bundle] brings PyInstaller. Torch from above stays.
"$vpy" -m pip install "$root[bundle]"
"$vpy" -m pip install --no-deps --force-reinstall "$root"
"$vpy" - "$torch" <<'PY'
import sys, bone_apps, torch, torchvision  # a torchvision built for another torch fails here
where = bone_apps.__file__
if "site-packages" not in where:
    sys.exit(f"bone_apps is imported from {where}, not from an install: PyInstaller would miss it")
print(f"bone_apps {bone_apps.__version__} from {where}; torch {torch.__version__} "
      f"({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'} build)")
if sys.argv[1] == "cpu" and torch.version.cuda:
    print("WARNING: asked for CPU torch, building with a CUDA build (NVIDIA libraries included)",
          file=sys.stderr)
PY

echo "== PyInstaller"
"$vpy" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$root/dist" --workpath "$work" "$here/bone_apps.spec"

bundle="$root/dist/bone_apps"
exe="$bundle/bone"
if [ "$platform" = windows ]; then exe="$exe.exe"; fi
"$exe" --version

version="$("$vpy" -c 'import bone_apps; print(bone_apps.__version__)')"
# What is inside, for whoever holds the folder: versions and which torch.
"$vpy" - "$bundle/BUILD.txt" <<'PY'
import platform, sys, time, bone_apps, torch
kind = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write(f"bone_apps {bone_apps.__version__}\ntorch {torch.__version__} ({kind} build)\n"
              f"python {platform.python_version()}\nbuilt on {platform.platform()}, "
              f"{time.strftime('%Y-%m-%d', time.gmtime())}\n")
PY
if [ "$archive" = 1 ]; then
    name="bone_apps-$version-$platform-$(uname -m)"
    if [ "$platform" = macos ]; then
        # The dmg holds bone_apps.app (the chooser of DLFit, DLPred and IoU; `bone` is in
        # bone_apps.app/Contents/MacOS) and a link to /Applications to drag it onto.
        out="$root/dist/$name.dmg"
        staging="$root/build/dmg"
        rm -rf "$out" "$staging"
        mkdir -p "$staging"
        cp -R "$root/dist/bone_apps.app" "$staging/"
        ln -s /Applications "$staging/Applications"
        hdiutil create -volname "bone_apps $version" -srcfolder "$staging" -ov -format UDZO "$out"
    else
        out="$root/dist/$name.zip"
        rm -f "$out"
        # Python's zipfile: zip(1) is often missing on Windows shells.
        (cd "$root/dist" && "$vpy" -m zipfile -c "$out" bone_apps)
    fi
    echo "archive: $out ($(du -sh "$out" | cut -f1))"
fi
echo "bundle: $bundle ($(du -sh "$bundle" | cut -f1)), torch from $torch_source"
echo "build time: $(( $(date +%s) - started )) s"

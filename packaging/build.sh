#!/usr/bin/env bash
# Build the one-folder bundle dist/bone_apps/ (bone, bone-dlfit, bone-dlpred, bone-iou) and zip it.
# Run from anywhere, inside the environment bone_apps is installed in (pip install -e . or .):
#   packaging/build.sh
# For CUDA PyTorch, install the CUDA wheel of torch in that environment first (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"
python="${PYTHON:-python}"

if ! "$python" -m PyInstaller --version >/dev/null 2>&1; then
    echo "installing pyinstaller"
    "$python" -m pip install pyinstaller
fi
"$python" -c "import bone_apps" || {
    echo "bone_apps is not installed in this environment: pip install . first" >&2
    exit 2
}

"$python" -m PyInstaller --noconfirm --clean \
    --distpath "$root/dist" --workpath "$root/build/pyinstaller" "$here/bone_apps.spec"

version="$("$python" -c 'import bone_apps; print(bone_apps.__version__)')"
case "$(uname -s)" in
    Linux*) platform=linux ;;
    MINGW*|MSYS*|CYGWIN*) platform=windows ;;
    Darwin*) platform=macos ;;
    *) platform="$(uname -s)" ;;
esac
if [ "$platform" = linux ] || [ "$platform" = windows ]; then
    archive="$root/dist/bone_apps-$version-$platform-$(uname -m).zip"
    rm -f "$archive"
    # Python's zipfile: zip(1) is often missing on Windows shells.
    (cd "$root/dist" && "$python" -m zipfile -c "$archive" bone_apps)
    echo "built $root/dist/bone_apps and $archive"
else
    echo "built $root/dist/bone_apps"
fi

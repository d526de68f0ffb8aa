<#
.SYNOPSIS
Build the one-folder bundle dist\bone_apps\ (bone.exe, bone-dlfit.exe, bone-dlpred.exe,
bone-iou.exe) on Windows and zip it: what packaging/build.sh does, for PowerShell.

.DESCRIPTION
    powershell -ExecutionPolicy Bypass -File packaging\build.ps1 [-Torch cpu|cuda|INDEX-URL]
        [-Python PYTHON] [-Fresh] [-NoArchive]

    -Torch cpu     PyTorch's CPU wheels (https://download.pytorch.org/whl/cpu; the default): the
                   small bundle. When that index cannot be reached, the build goes on with the
                   torch pip installs by default and says so.
    -Torch cuda    the torch pip installs by default (PyPI: a CPU build on Windows).
    -Torch URL     torch and torchvision from that index (e.g. https://download.pytorch.org/whl/cu128).
    -Python        the interpreter the build environment is made from (default: py -3, else python).
    -Fresh         make the build environment anew.
    -NoArchive     leave out the zip.

It builds in its own virtual environment, build\bundle-venv, from a normal install of this
checkout: PyInstaller cannot see an editable install (pip install -e), and would build a bundle
without bone_apps in it.
#>
param(
    [string]$Torch = "cpu",
    [string]$Python = "",
    [switch]$Fresh,
    [switch]$NoArchive
)
$ErrorActionPreference = "Stop"

function Invoke-Checked {
    # Run a program; stop the build when it fails (PowerShell does not, for native programs).
    param([string]$Exe, [Parameter(ValueFromRemainingArguments = $true)][string[]]$Arguments)
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "build.ps1: '$Exe $($Arguments -join ' ')' failed ($LASTEXITCODE)" }
}

$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$root = Split-Path -Parent $here
if (-not $Python) {
    if (Get-Command py -ErrorAction SilentlyContinue) { $Python = "py" } else { $Python = "python" }
}
switch -Regex ($Torch) {
    "^cpu$" { $index = "https://download.pytorch.org/whl/cpu" }
    "^cuda$" { $index = "" }
    "^(https?|file):" { $index = $Torch }
    default { Write-Error "build.ps1: -Torch takes cpu, cuda or an index URL, not $Torch"; exit 2 }
}

$started = Get-Date
$venv = Join-Path $root "build\bundle-venv"
$work = Join-Path $root "build\pyinstaller"
New-Item -ItemType Directory -Force -Path $work | Out-Null
Set-Location $work  # outside the checkout: its bone_apps folder must not shadow the installed one
if ($Fresh -and (Test-Path $venv)) { Remove-Item -Recurse -Force $venv }
if (-not (Test-Path $venv)) {
    Write-Host "== build environment: $venv (from $Python)"
    if ($Python -eq "py") { Invoke-Checked py -3 -m venv $venv } else { Invoke-Checked $Python -m venv $venv }
}
$vpy = Join-Path $venv "Scripts\python.exe"

Write-Host "== torch: $Torch"
$torchSource = "pip's default torch"
if ($index) {
    $reachable = $true
    try { Invoke-WebRequest -Uri $index -UseBasicParsing -TimeoutSec 15 | Out-Null } catch { $reachable = $false }
    if ($reachable) {
        & $vpy -m pip install --retries 2 torch torchvision --index-url $index
        if ($LASTEXITCODE -eq 0) { $torchSource = $index } else { $reachable = $false }
    }
    if (-not $reachable) {
        Write-Warning "torch could not be installed from $index; building with pip's default torch"
    }
}
# bone_apps itself, not editable; [bundle] brings PyInstaller. Torch from above stays.
Invoke-Checked $vpy -m pip install "$root[bundle]"
Invoke-Checked $vpy -m pip install --no-deps --force-reinstall $root
$check = @'
import sys, bone_apps, torch, torchvision  # a torchvision built for another torch fails here
where = bone_apps.__file__
if "site-packages" not in where:
    sys.exit(f"bone_apps is imported from {where}, not from an install: PyInstaller would miss it")
print(f"bone_apps {bone_apps.__version__} from {where}; torch {torch.__version__} "
      f"({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'} build)")
if sys.argv[1] == "cpu" and torch.version.cuda:
    print("WARNING: asked for CPU torch, building with a CUDA build (NVIDIA libraries included)",
          file=sys.stderr)
'@
Invoke-Checked $vpy -c $check $Torch

Write-Host "== PyInstaller"
Invoke-Checked $vpy -m PyInstaller --noconfirm --clean --log-level WARN `
    --distpath (Join-Path $root "dist") --workpath $work (Join-Path $here "bone_apps.spec")

$bundle = Join-Path $root "dist\bone_apps"
Invoke-Checked (Join-Path $bundle "bone.exe") --version

$version = (& $vpy -c "import bone_apps; print(bone_apps.__version__)").Trim()
# What is inside, for whoever holds the folder: versions and which torch.
$buildInfo = @'
import platform, sys, time, bone_apps, torch
kind = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write(f"bone_apps {bone_apps.__version__}\ntorch {torch.__version__} ({kind} build)\n"
              f"python {platform.python_version()}\nbuilt on {platform.platform()}, "
              f"{time.strftime('%Y-%m-%d', time.gmtime())}\n")
'@
Invoke-Checked $vpy -c $buildInfo (Join-Path $bundle "BUILD.txt")
if (-not $NoArchive) {
    $arch = @{ "AMD64" = "x86_64"; "ARM64" = "arm64"; "X86" = "i686" }[$env:PROCESSOR_ARCHITECTURE]
    if (-not $arch) { $arch = $env:PROCESSOR_ARCHITECTURE.ToLower() }  # the names uname -m gives
    $out = Join-Path $root "dist\bone_apps-$version-windows-$arch.zip"
    if (Test-Path $out) { Remove-Item -Force $out }
    Push-Location (Join-Path $root "dist")
    try { Invoke-Checked $vpy -m zipfile -c $out bone_apps } finally { Pop-Location }
    Write-Host ("archive: $out ({0:N0} MB)" -f ((Get-Item $out).Length / 1MB))
}
$size = (Get-ChildItem -Recurse -File $bundle | Measure-Object -Property Length -Sum).Sum
Write-Host ("bundle: $bundle ({0:N0} MB), torch from $torchSource" -f ($size / 1MB))
Write-Host ("build time: {0:N0} s" -f ((Get-Date) - $started).TotalSeconds)

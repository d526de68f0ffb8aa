"""Plain-words tooltips of the DLFit options: what each does, the paper's default, when to change it.

Keys are FitConfig field names (augmentation fields by their AugmentConfig names).
"""

from __future__ import annotations

import re

from bone_apps.core.data.augment import AugmentConfig
from bone_apps.core.errors import OptionError
from bone_apps.core.fit.config import FitConfig
from bone_apps.core.options import defaults, described, shown_value

EASY_RECIPE = (
    "Easy mode fits the paper's tested recipe (BP-2D-03): a U-Net with a ResNet-18 encoder on "
    "2D slices, 256-px patches (4 per slice), Z-score normalization, augmentation, batch 64, "
    "learning rate 0.001 with Adam and cosine annealing, Jaccard loss, ImageNet start when "
    "online; patch and batch shrink for small scans.")



def easy_recipe_text(run: tuple[int, int, list[str]] | None) -> str:
    """The recipe; once an Easy run started, the patch and batch it really uses and why
    (the window is too short at 1280x800 for both: the recipe then goes to the tooltip).

    Args:
        run: the requested patch size and batch, and the engine's "Easy mode: …" notes so far
            (they say how patch and batch shrink for small data); None before a run.
    """
    if run is None:
        return EASY_RECIPE
    patch, batch, notes = run
    for note in notes:
        found = re.search(r"patches shrink from \d+ to (\d+) px", note)
        patch = int(found.group(1)) if found else patch
        found = re.search(r"batch shrinks from \d+ to (\d+)", note)
        batch = int(found.group(1)) if found else batch
    reasons = [n.removeprefix("Easy mode: ") for n in notes]
    why = "".join(f"\n• {r[:1].upper()}{r[1:]}" for r in reasons)
    return (f"This Easy run uses the paper's recipe with {patch}-px patches and batch {batch}."
            f"{why}")


TORCHRUN_NOTE = (
    "Clusters and many GPUs: save the configuration, then run "
    "<code>torchrun --nproc_per_node=GPUS -m bone_apps fit --config CONFIG.json</code> "
    "on each node (much faster than “all GPUs” here).")

_TIPS: dict[str, str] = {
    "out": "Folder for the fitted model (model.pth), the resumable checkpoint, logs and curves. "
           "Choose an empty folder for a new run; choosing the folder of a stopped run offers "
           "to resume it.",
    "epochs": "How many times the whole training set is seen. Paper: {default}. More epochs can help "
              "with many scans or hard classes; fewer give a quick first model.",
    "reproducible": "Fix every random seed and use deterministic algorithms, so a rerun on the "
                    "same computer gives bit-identical weights. Paper: on for its tables. It is "
                    "somewhat slower on GPUs; turn it off for everyday fitting.",
    "seed": "Starting number of every random draw (scan split, patch positions, augmentation, "
            "initial weights). Paper: {default}. Change it to see how much results vary by chance.",
    "device": "Where fitting runs. Automatic uses an NVIDIA GPU when there is one, else the "
              "CPU. “All GPUs” splits each batch over every GPU of this computer "
              "(DataParallel, the paper's multi-GPU mode).",
    "precision": "Number format of the computations. Automatic: mixed 16-bit on GPUs (faster, "
                 "less memory, the paper's choice) and 32-bit on the CPU. Use 32-bit if the "
                 "loss becomes NaN; bf16 suits recent GPUs.",
    "workers": "Processes that read and prepare patches while the model fits. Automatic: one "
               "per CPU core (at most 8). Lower it if the computer runs out of memory.",
    "stats_workers": "Processes that compute each scan's intensity statistics before fitting. "
                     "Automatic: one per scan up to the core count. Lower it for huge scans on "
                     "a computer with little memory.",
    "dims": "2D fits one slice at a time (the paper's tested mode). 2.5D gives the network "
            "neighbouring slices as extra channels to label the centre slice. 3D fits slabs "
            "with a 3D network (slower, needs more memory).",
    "context": "2.5D only: slices taken on each side of the centre slice (1 means 3 slices in "
               "all). Raise it when structures are easier to tell apart across slices.",
    "patch_depth": "3D only: slices in each 3D patch (a multiple of 16). Paper: not used "
                   "(2D). Larger sees more context but needs much more memory.",
    "patch": "Width and height in pixels of the square crops the network learns from (a "
             "multiple of 32; 16 in 3D). Paper: {default}. Smaller patches fit more in memory; "
             "larger ones see more context around each structure.",
    "patches_per_tile": "Random patches cropped from each slice (tile) per epoch. Paper: {default}. "
                        "Raise it for large slices so more of each slice is seen per epoch.",
    "max_overlap": "Largest share of a patch's area that may overlap another patch of the "
                   "same slice (0 = no overlap, 1 = any). Default {default}. Lower it for more "
                   "varied patches from large slices.",
    "augment": "Randomly flip, rotate (in 90° steps), brighten and change the contrast of "
               "training patches so the model copes with new scans. Paper: on. Turn it off "
               "only to compare with an unaugmented run.",
    "p_hflip": "Chance per slice of a left-right flip. Paper: {default}.",
    "p_vflip": "Chance per slice of an up-down flip. Paper: {default}.",
    "p_rotate": "Chance per slice of a rotation by 90, 180 or 270°. Paper: {default}. Flip and "
                "rotation chances together may not exceed 1 (the rest: no change).",
    "p_brightness": "Chance per patch of a brightness shift. Paper: {default}. Raise it when scans "
                    "differ in overall brightness.",
    "brightness": "Largest brightness shift, in normalized units. Paper: {default}.",
    "p_contrast": "Chance per patch of a contrast change. Paper: {default}. Raise it when scans "
                  "differ in contrast (scanners, settings).",
    "contrast_low": "Smallest contrast factor. Paper: {default}.",
    "contrast_high": "Largest contrast factor. Paper: {default}.",
    "norm": "How each scan's grey values are scaled before fitting, with that scan's own "
            "statistics. Z-score (paper's choice): mean 0, spread 1. Min-max: 0 to 1 between "
            "the 0.5 and 99.5 % percentiles (robust to a few bright voxels). Full min-max: "
            "between the true darkest and brightest voxels.",
    "train_fraction": "Share of whole scans used for fitting; the rest validate (no slice of a "
                      "validation scan is ever fitted). Paper: {default}. Or tick Validation scans "
                      "in the table to choose them yourself.",
    "arch": "The network design (decoder). Paper: U-Net, tested best for bone. Only "
            "architectures that can be built are listed; 3D mode offers a 3D U-Net.",
    "encoder": "The feature-extracting part (backbone). Paper: ResNet-18. Larger encoders "
               "(ResNet-50, EfficientNet-B3) may help with many varied scans but are slower. "
               "Only encoders that work with the chosen architecture are listed.",
    "class_names": "Names of labels 0, 1, 2, … separated by commas; they also fix the class "
                   "count. Leave empty to take the classes from the masks (highest label + 1; "
                   "the paper's: background, bone, pores).",
    "init": "Starting weights. ImageNet when online, else random (automatic, the paper's "
            "choice); random; ImageNet (fails offline); or a model file fitted with this "
            "software, to carry on from it with new scans (transfer learning).",
    "init_file": "A model.pth fitted with this software; its architecture and encoder must "
                 "match. A different class count is fine: the last layer starts fresh.",
    "loss": "What fitting minimizes. Paper: Jaccard (1 − IoU). Dice is similar; Focal "
            "Tversky helps with rare classes or thin structures; CE + Jaccard adds "
            "cross-entropy for steadier early epochs.",
    "optimizer": "How weights are updated. Paper: Adam. AdamW adds decoupled weight decay "
                 "(less overfitting); SGD with momentum 0.9 can generalize well with a good "
                 "learning rate.",
    "weight_decay": "Pull of the weights towards zero, against overfitting. Automatic: 0 for "
                    "Adam and SGD, 0.01 for AdamW.",
    "scheduler": "How the learning rate changes over epochs. Paper: one cosine cycle from the "
                 "learning rate down to 0. Cosine with restarts jumps back up periodically; "
                 "constant keeps it fixed.",
    "restart_epochs": "Cosine with restarts only: epochs between restarts.",
    "lr": "Learning rate: the size of each weight update. Paper: {default}. Lower it (0.0003) if "
          "the loss jumps around; raise it for SGD (0.01).",
    "batch": "Patches processed together per update. Paper: {default}. Lower it if memory runs out "
             "(the window shows RAM and GPU memory).",
    "profile": "Count the model's operations (FLOPs) and parameters once at the start, as the "
               "paper reports them. Turn off to start a little faster.",
}


def _with_defaults(tips: dict[str, str]) -> dict[str, str]:
    """The tooltips with each {default} written as the option's default (FitConfig's,
    AugmentConfig's), so a tooltip never states another default than the engine's."""
    values = {**defaults(FitConfig), **AugmentConfig().to_dict()}
    return {key: text.replace("{default}", shown_value(values[key])) if "{default}" in text else text
            for key, text in tips.items()}


TIPS = _with_defaults(_TIPS)


def _spelled_flags() -> dict[str, str]:
    """The flags that core messages other than FitConfigErrors still spell out (no config is at
    hand where they are raised), in the window's words: --out, --resume and --overwrite (the run
    folder, the checkpoint), --init (ImageNet weights unavailable), --data (a dataset root without
    scans/ and masks/), --level (an OME-Zarr pyramid); resuming and overwriting are the window's
    own steps, not options."""
    options = described(FitConfig)
    words = {options[name].flag: options[name].in_words for name in ("out", "init", "data", "level")}
    return {**words, "--overwrite": "\u201cReplace it\u201d when Start asks",
            "--resume": "\u201cResume\u201d", "`bone fit --list-models`": "the Encoder list"}


_SPELLED = _spelled_flags()


def plain_options(message: str | BaseException) -> str:
    """An engine message in the window's words: an OptionError names its options by their labels
    (its {field}s); the few flags other core messages spell out become the same labels."""
    if isinstance(message, OptionError):
        return message.shown(as_label=True)
    message = str(message)
    for flag, words in sorted(_SPELLED.items(), key=lambda item: -len(item[0])):
        message = message.replace(flag, words)
    return message

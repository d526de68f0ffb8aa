"""The scans in a fixed order, cut into K test folds of whole scans (the paper's Table 3).

The paper shuffled its 20 scans once, wrote them down in that order, and took scans 1-4 as
test fold 1, 5-8 as test fold 2, and so on; each fold's training/validation pool is every
other scan, in sequence order, split into training and validation by the usual scan-level
split with the run's seed (§2.5.1). The same order can be given as a file of scan IDs
(`read_order_file`) or drawn from a seed (`scan_order`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bone_apps.core.data.split import Split, split_scans
from bone_apps.core.errors import FitConfigError

DEFAULT_ORDER_SEED = 42
_HEADER_WORDS = re.compile(r"^(order|scan( id)?|id|test fold|fold|#)$", re.IGNORECASE)


def _shown(ids: Sequence[str], limit: int = 4) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def read_order_file(path: str | os.PathLike, ids: Sequence[str]) -> list[str]:
    """The scan order listed in a text file: one scan ID per line, or a table as the paper's
    Table 3 prints it (order, scan ID, test fold; tabs, commas or runs of spaces between),
    whose cells that are scan IDs give the order. Blank lines, `#` comments and a header
    line are skipped.

    Raises:
        FitConfigError: the file cannot be read, a line names no scan or an unknown one, a
            scan is listed twice, or a scan of the data is missing from it.
    """
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise FitConfigError(f"{path} cannot be read ({exc.strerror}): give a text file listing "
                             "one scan ID per line.") from None
    except UnicodeDecodeError:
        raise FitConfigError(f"{path} is not a text file: give a text file listing one scan ID "
                             "per line.") from None
    known = set(ids)
    order: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in re.split(r"\t|,|;|\s{2,}", line) if c.strip()]
        if len(cells) == 1 and " " in cells[0] and cells[0] not in known:
            cells = cells[0].split()
        named = [c for c in cells if c in known]
        if len(named) == 1:
            if named[0] in order:
                raise FitConfigError(f"{path} lists scan {named[0]} twice (line {number}): list "
                                     "each scan once.")
            order.append(named[0])
            continue
        if not order and all(_HEADER_WORDS.match(c) for c in cells):
            continue  # a header line
        if named:
            raise FitConfigError(f"{path} line {number} names several scans ({', '.join(named)}): "
                                 "give one scan ID per line.")
        unknown = next((c for c in cells if not c.isdigit()), cells[0])
        raise FitConfigError(f"{path} line {number} names {unknown!r}, which is not a scan of the "
                             f"data ({_shown(sorted(known))}): use the scans' IDs.")
    missing = [i for i in ids if i not in order]
    if missing:
        raise FitConfigError(f"{path} does not list {_shown(missing)}: list every scan of the data "
                             "once, or leave those scans out of the data.")
    return order


def scan_order(ids: Sequence[str], order_seed: int = DEFAULT_ORDER_SEED) -> list[str]:
    """`ids` shuffled once with `order_seed` (the same seed always gives the same order)."""
    ids = list(ids)
    return [ids[i] for i in np.random.default_rng(order_seed).permutation(len(ids))]


@dataclass(frozen=True)
class Folds:
    """K test folds of whole scans cut from a fixed order.

    `order` is the fixed order; `tests[f]` the scans of test fold f+1 (consecutive in the
    order; fold sizes differ by at most one, the larger folds first); the pool of a fold is
    every other scan, in order. `order_seed` or `order_file` says where the order came from.
    """

    order: tuple[str, ...]
    tests: tuple[tuple[str, ...], ...]
    order_seed: int | None = None
    order_file: str | None = None

    @property
    def k(self) -> int:
        return len(self.tests)

    def pool(self, fold: int) -> tuple[str, ...]:
        """Training/validation scans of `fold` (1-based), in sequence order."""
        test = set(self.tests[fold - 1])
        return tuple(i for i in self.order if i not in test)

    def to_dict(self) -> dict:
        return {"order": list(self.order), "order_seed": self.order_seed,
                "order_file": self.order_file, "folds": [list(t) for t in self.tests],
                "pools": [list(self.pool(f)) for f in range(1, self.k + 1)]}

    @classmethod
    def from_dict(cls, data: dict) -> Folds:
        return cls(tuple(data["order"]), tuple(tuple(t) for t in data["folds"]),
                   data.get("order_seed"), data.get("order_file"))


def make_folds(ids: Sequence[str], k: int, order_seed: int | None = None,
               order_file: str | os.PathLike | None = None,
               val_scans: Sequence[str] = ()) -> Folds:
    """Put `ids` in a fixed order (`order_file`, else shuffled with `order_seed`, else with
    DEFAULT_ORDER_SEED) and cut it into `k` test folds of whole scans.

    `val_scans` (fit's --val-scans): the scans that validate in every pool holding them.

    Raises:
        FitConfigError: fewer than 2 folds, more folds than scans, a fold whose pool has no
            validation scan (a pool of one scan, or one holding none of `val_scans`) or no
            training scan, both an order file and an order seed, or a bad order file.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise FitConfigError("two scans share an ID: give each scan a unique folder or file name.")
    if k < 2:
        raise FitConfigError(f"--folds {k}: cross-validation needs at least 2 folds.")
    if k > len(ids):
        raise FitConfigError(f"--folds {k} is more than the {len(ids)} scans: every test fold needs "
                             f"a scan of its own, so use --folds {len(ids)} or fewer.")
    if order_file is not None and order_seed is not None:
        raise FitConfigError("give either --order FILE or --order-seed N, not both.")
    unknown = [v for v in val_scans if v not in ids]
    if unknown:
        raise FitConfigError(f"{{val_scans}} names {_shown(unknown)}, which are not among the scans "
                             f"({_shown(ids)}): use those names.", "val_scans")
    if order_file is not None:
        order = read_order_file(order_file, ids)
    else:
        order_seed = DEFAULT_ORDER_SEED if order_seed is None else int(order_seed)
        order = scan_order(sorted(ids), order_seed)
    tests = tuple(tuple(str(i) for i in part) for part in np.array_split(np.array(order, dtype=object), k))
    folds = Folds(tuple(order), tests, order_seed,
                  None if order_file is None else str(Path(order_file).expanduser()))
    for f in range(1, k + 1):
        pool = folds.pool(f)
        if len(pool) < 2:
            raise FitConfigError(f"test fold {f} leaves {len(pool)} scan for fitting, so its pool has "
                                 "no validation scan: use fewer folds or more scans.")
        if val_scans:
            val = [i for i in pool if i in set(val_scans)]
            if not val:
                raise FitConfigError(f"test fold {f} holds every {{val_scans}} scan "
                                     f"({_shown(list(val_scans))}), so its pool has no validation "
                                     "scan: name validation scans of several folds, or leave "
                                     "{val_scans} out to split each pool by seed.", "val_scans")
            if len(val) == len(pool):
                raise FitConfigError(f"{{val_scans}} names every scan of test fold {f}'s pool, so "
                                     "nothing is left to fit: name fewer validation scans.", "val_scans")
    return folds


def pool_split(folds: Folds, fold: int, seed: int, train_fraction: float = 0.8,
               val_scans: Sequence[str] = ()) -> Split:
    """The training/validation split of `fold`'s pool with `seed`: the one the fit of that
    fold and seed makes (split.split_scans over the pool in sequence order)."""
    pool = folds.pool(fold)
    val = [i for i in pool if i in set(val_scans)]
    return split_scans(pool, train_fraction, seed, val or None)

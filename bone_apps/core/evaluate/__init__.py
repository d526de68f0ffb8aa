"""Evaluation as the paper does it (§2.5): scan-level cross-validation over several seeds
(Table 6), a benchmark grid of architecture x encoder x patch size scored on held-out scans,
and the weighted ranking that trades mIoU against cost (Table 7).

folds.py     the fixed scan order and its K test folds of whole scans
runs.py      one fit, its prediction of the held-out scans and their scores (resumable)
cv.py        cross-validation: every fold x seed (`bone cv`)
summary.py   Table 6's statistics, and cv.json, cv.csv, cv.md
plot.py      per-scan mIoU by fold (the paper's Fig. 9 style)
bench.py     the benchmark grid and its cost figures (`bone bench`)
rank.py      min-max normalized weighted scores and the sensitivity sweep (`bone rank`)
results.py   a cv.json or bench.json read back and checked, for the windows that show it
"""

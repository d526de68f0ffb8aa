"""Bone morphometry, one idea per module (the public entry point is core/measure/morphometry.py).

thickness.py   direct 3D local thickness (Hildebrand & Rueegsegger 1997), exact, in z-slabs
surface.py     bone surface from a marching-cubes mesh
euler.py       Euler characteristic with the edge correction of Odgaard & Gundersen (1993)
cortical.py    slice-by-slice cortical areas (total, cortical, marrow)
report.py      the results: per-label measures, JSON form, terminal table, CSV
compare.py     a reference and a prediction measured alike, and their differences per label
"""

"""What fitting feeds on: normalization, scan/mask pairs, sampling, the loader, the split and synthetic
scans."""

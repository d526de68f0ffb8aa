"""What fitting feeds on: normalization and statistics, scan/mask pairs, augmentation, sampling, the
loader, the split and synthetic scans."""

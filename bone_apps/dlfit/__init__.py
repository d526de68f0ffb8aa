"""The DLFit desktop app: fit a segmentation model on scan/mask pairs (Easy or Advanced mode)."""

"""bone_apps: segment bone and pores in micro-CT scans (DLFit, DLPred, IoU)."""

__version__ = "0.1.0"

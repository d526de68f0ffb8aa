"""The DLPred desktop app."""

"""The DLFit desktop app."""

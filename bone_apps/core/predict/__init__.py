"""Applying a model: chunk windows, the inferer, segmenting a volume or an array, and clean-up."""

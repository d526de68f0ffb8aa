"""Scoring labels against a reference: confusion matrices, IoU and Dice, error maps."""

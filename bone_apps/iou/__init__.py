"""The IoU desktop app (BONe IoU): scores a predicted mask against a reference."""

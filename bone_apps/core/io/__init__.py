"""Reading and writing volumes: the Volume interface and its reader registry (volume.py), TIFF
(tiff.py), the other formats (formats/), the writer, label values and safe outputs. Nothing here
imports torch."""

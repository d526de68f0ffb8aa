"""Reading and writing volumes: the Volume interface, its formats, the writer, label values and safe
outputs. Nothing here imports torch."""

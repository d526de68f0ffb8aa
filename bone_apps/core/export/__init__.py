"""Models that run elsewhere: a weights file exported as ONNX or as a bioimage.io model package,
and an exported .onnx read back so that `bone predict` runs it with onnxruntime.

sample.py    the test input: a block of a scan (the user's, or a generated sample scan)
onnx.py      `export_onnx`: the network as ONNX with the weights' metadata inside, checked
             against PyTorch
runtime.py   `load_onnx_model`: an .onnx file as the network of prediction (onnxruntime)
bioimageio.py  `export_bioimageio`: a bioimage.io model package (rdf, test tensors, TorchScript
             and ONNX weights, cover, documentation), validated offline
bioimageio_check.py  a package's file names and preprocessing; `validate_package`, `check_package`
"""

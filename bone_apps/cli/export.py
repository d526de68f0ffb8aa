"""`bone export`: a fitted model as ONNX or as a bioimage.io model package."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from bone_apps.core.export.bioimageio import LICENSE

    parser = subparsers.add_parser(
        "export", help="write a fitted model as ONNX or as a bioimage.io model package",
        description="Write the network of a weights file so that it runs elsewhere: as ONNX (any "
                    "batch and size, with the weights' metadata inside, so `bone predict --weights "
                    "OUT.onnx` runs it with onnxruntime) and/or as a bioimage.io model package "
                    "(TorchScript and ONNX weights, test input and output, cover, README, citing the "
                    "paper) for the model zoo, deepImageJ and ilastik. Before anything is saved, "
                    "onnxruntime must reproduce PyTorch on a test input cut from a scan, and the "
                    "package must pass bioimage.io's validation (offline).")
    parser.add_argument("weights", type=Path, metavar="MODEL.pth", help="weights file written by bone fit")
    parser.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="write the network as ONNX")
    parser.add_argument("--bioimageio", type=Path, metavar="OUT.zip",
                        help="write a bioimage.io model package")
    parser.add_argument("--sample", type=Path, metavar="SCAN",
                        help="scan to cut the test input from (default: a generated sample scan)")
    package = parser.add_argument_group("bioimage.io package")
    package.add_argument("--name", help="the package's name (default: from the architecture and classes)")
    package.add_argument("--author", action="append", default=[], metavar="NAME",
                         help="an author of the model (repeat for several)")
    package.add_argument("--license", default=LICENSE, metavar="SPDX",
                         help=f"the package's license, an SPDX identifier (default {LICENSE})")
    package.add_argument("--description", help="one or two sentences about the model")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs, only ones bone_apps wrote")
    parser.set_defaults(func=run, command="export")


def run(args: argparse.Namespace) -> int:
    from bone_apps.core.errors import BoneAppsError
    from bone_apps.core.export.bioimageio import export_bioimageio
    from bone_apps.core.export.bioimageio_check import zip_is_ours
    from bone_apps.core.export.onnx import check_exportable_target, export_onnx, onnx_is_ours

    if args.onnx is None and args.bioimageio is None:
        raise BoneAppsError("nothing to write: give --onnx OUT.onnx, --bioimageio OUT.zip or both.")
    # Both outputs are checked before either is written.
    if args.onnx is not None:
        check_exportable_target(args.onnx.expanduser(), ".onnx", args.overwrite, onnx_is_ours)
    if args.bioimageio is not None:
        check_exportable_target(args.bioimageio.expanduser(), ".zip", args.overwrite, zip_is_ours)
    if args.onnx is not None:
        print(export_onnx(args.weights, args.onnx, args.overwrite, args.sample).text())
    if args.bioimageio is not None:
        result = export_bioimageio(args.weights, args.bioimageio, args.overwrite, args.sample, args.name,
                                   tuple(args.author), args.license, args.description)
        print(result.text())
    return 0

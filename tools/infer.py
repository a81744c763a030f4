"""Batched inference: python tools/infer.py -c configs/lenet_mnist.yml --image DIR --output results.json"""
import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import add_config_args, add_runtime_args, load_config_from_args, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--image", help="an image, a folder (label = sub-folder), a glob or a list file; "
                                        "default: data.images from the config")
    parser.add_argument("--output", type=Path, help="write every result to this JSON file")
    args = parser.parse_args(argv)
    from deploy.infer import run_inference

    summary = run_inference(load_config_from_args(args), images=args.image, output=args.output, quiet=args.quiet)
    print(summary.line())


if __name__ == "__main__":
    run_tool(main)

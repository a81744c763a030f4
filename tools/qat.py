"""Quantization-aware training: python tools/qat.py -c configs/lenet_mnist_qat.yml

Fine-tunes the network named in the config's qat section from its FP32 weights with fake quantization
(PaddleSlim), then exports a quantized inference model to model.dir; tools/infer.py runs it in INT8.
"""
import argparse

import _bootstrap  # noqa: F401
from deploy.cli import add_config_args, load_config_from_args, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--epochs", type=int, help="override qat.epochs")
    args = parser.parse_args(argv)
    from deploy.int8.qat import run_qat

    cfg = load_config_from_args(args, [f"qat.epochs={args.epochs}"] if args.epochs else [])
    result = run_qat(cfg, quiet=args.quiet)
    print(f"QAT done in {result.seconds:.1f} s: top-1 {100 * result.accuracy_before:.2f}% (FP32) -> "
          f"{100 * result.accuracy_after:.2f}% (fake-quant); quantized model {result.model.program}")


if __name__ == "__main__":
    run_tool(main)

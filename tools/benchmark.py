"""Latency, throughput, first-run time and memory per precision and batch size, runs interleaved:

  python tools/benchmark.py -c configs/lenet_mnist.yml --precisions fp32,int8 --batch-sizes 1,8,64 \\
      [--threads N] [--warmup 10 --iters 100] [--compare qat=configs/lenet_mnist_qat.yml:int8] [--output-dir DIR]

Throughput is batch / median latency, predictor-only and end-to-end (decode + preprocess + infer); the table
prints each run's ratio to the -c config at fp32. With --budget 0.5 every run is also scored on the labelled
images, and the fastest run whose metric is at most 0.5 point below the reference's is named per batch size:
  python tools/benchmark.py -c configs/ppocr_cls.yml --backends paddle,openvino --precisions fp32,int8 \\
      --batch-sizes 1,64 --budget 0.5
"""
import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import (add_benchmark_args, add_comparison_args, add_config_args, add_runtime_args, int_list,
                        run_specs_from_args, run_tool)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    add_runtime_args(parser, precision=False)
    add_comparison_args(parser)
    add_benchmark_args(parser)
    parser.add_argument("--image", help="images to decode for end-to-end timing, and to score with --budget "
                                        "(default: data.images)")
    parser.add_argument("--limit", type=int, help="with --budget: score only this many images, evenly spaced")
    args = parser.parse_args(argv)
    from deploy.report.benchmark import BenchOptions
    from deploy.report.evaluate import EvalOptions
    from deploy.report.report import precision_report

    report = precision_report(
        runs=run_specs_from_args(args),
        evaluation=EvalOptions(args.image, args.limit) if args.budget is not None else None,
        benchmark=BenchOptions(int_list(args.batch_sizes, "--batch-sizes"), args.warmup, args.iters, args.image),
        budget=args.budget, output_dir=args.output_dir, quiet=args.quiet)
    print(report.console())
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / 'report.md'}")


if __name__ == "__main__":
    run_tool(main)

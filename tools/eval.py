"""The task's metric and agreement per precision, side by side, on a labelled image set:

  python tools/eval.py -c configs/lenet_mnist.yml --precisions fp32,int8 \\
      --compare qat=configs/lenet_mnist_qat.yml:int8 --benchmark --output-dir reports/lenet

Every run sees the same preprocessed batches; the -c config at fp32 is the reference for agreement, cosine and
differences. --calib-sweep 50,100,250,500 recalibrates a scratch copy of the model with each number of images
(your calibration is never touched). --benchmark adds the speed section (see tools/benchmark.py).
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
    parser.add_argument("--image", help="labelled images: a folder per class (classification) or a list file of "
                                        "'path<TAB>label' lines in the task's label format (default: data.images)")
    parser.add_argument("--limit", type=int, help="evaluate only this many images, evenly spaced over the set")
    parser.add_argument("--calib-sweep", metavar="LIST", help="calibration-set sizes to try, e.g. 50,100,250,500")
    parser.add_argument("--benchmark", action="store_true", help="also benchmark every run (options below)")
    add_benchmark_args(parser)
    args = parser.parse_args(argv)
    from deploy.report.benchmark import BenchOptions
    from deploy.report.evaluate import EvalOptions
    from deploy.report.report import precision_report

    bench = BenchOptions(int_list(args.batch_sizes, "--batch-sizes"), args.warmup, args.iters, args.image)
    report = precision_report(
        runs=run_specs_from_args(args),
        evaluation=EvalOptions(args.image, args.limit, int_list(args.calib_sweep, "--calib-sweep")),
        benchmark=bench if args.benchmark else None, budget=args.budget, output_dir=args.output_dir,
        quiet=args.quiet)
    print(report.console())
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / 'report.md'}")


if __name__ == "__main__":
    run_tool(main)

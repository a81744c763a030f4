"""The whole GPU matrix of a config on this machine, in one command:

  python tools/gpu_acceptance.py -c configs/ppocr_rec_trt-int8_tuned.yml --output-dir reports/gpu_rec

Prepares what the runs need (TensorRT shape ranges, the implicit calibration table where the TensorRT version still
has implicit calibration, the explicit Q/DQ model, the QAT model with --qat), then runs Paddle GPU FP32 (the
reference) and FP16, and TensorRT FP32, FP16, INT8 implicit and INT8 explicit (and --qat's INT8) with static and tuned
dynamic shapes, through the same evaluation and benchmark as tools/eval.py and tools/benchmark.py: the task's metric,
agreement with FP32, latency percentiles, memory. Then each TensorRT run is built again in a fresh process, which
loads the engines the first build serialized: build + first batch before and after a restart. Writes report.md / report.json / plots, acceptance.json and env.txt.

--dry-run prints the matrix for this machine and runs nothing. Without a GPU the command prints the matrix and exits 2.
"""
import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import add_config_args, int_list, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--output-dir", type=Path, help="where the report goes (default: reports/gpu_<config name>)")
    parser.add_argument("--qat", type=Path, metavar="CONFIG", help="also run this quantized (QAT) model's config")
    parser.add_argument("--image", help="labelled images to score and time (default: data.images)")
    parser.add_argument("--limit", type=int, help="score only this many images, evenly spaced")
    parser.add_argument("--batch-sizes", metavar="LIST", help="e.g. 1,8 (default: runtime.batch_size)")
    parser.add_argument("--iters", type=int, default=100, help="timed iterations per run (default: 100)")
    parser.add_argument("--dry-run", action="store_true", help="print the matrix for this machine, run nothing")
    args = parser.parse_args(argv)
    from deploy.env import probe
    from deploy.errors import UnsupportedError
    from deploy.report.acceptance import build_matrix, gpu_reason, restart_table, run_matrix

    env = probe()
    output_dir = args.output_dir or Path("reports") / f"gpu_{Path(args.config).stem}"
    matrix = build_matrix(Path(args.config), env, overrides=args.override, qat=args.qat, output_dir=output_dir,
                          quiet=args.quiet)
    reason = gpu_reason(env)
    if args.dry_run or reason:
        print(matrix.text())
        if args.dry_run:
            return
        raise UnsupportedError(f"no GPU run here ({reason}); nothing was run: run this on a machine with an NVIDIA "
                               "GPU and paddlepaddle-gpu (--dry-run prints the matrix)")
    result = run_matrix(matrix, output_dir, env, images=args.image, limit=args.limit,
                        batch_sizes=int_list(args.batch_sizes, "--batch-sizes"), iters=args.iters, quiet=args.quiet)
    print(result["report"].console())
    print(restart_table(result["restart"]))
    print(f"report: {output_dir / 'report.md'}; matrix and restart timings: {output_dir / 'acceptance.json'}")


if __name__ == "__main__":
    run_tool(main)

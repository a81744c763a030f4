"""Batch inference on a Ray cluster, resumable, with the same predictors as tools/infer.py:

  python tools/batch_infer.py -c configs/lenet_mnist.yml --input models/lenet_mnist/data/test --output out/ \\
      [--address auto|ray://HOST:10001] [--workers 2] [--gpus-per-worker 1] [--batch-size 64] \\
      [--format jsonl|parquet] [--resume]

Without --address it starts a local Ray on this machine, stopped when the driver ends however it ends (even
SIGKILL); SIGTERM or Ctrl-C stops the run cleanly (exit 143 or 130, finished shards kept). Results go to
OUT_DIR/part-*.jsonl (or .parquet): one record per image, the same as tools/infer.py --output writes, or
{"path", "error"} for an unreadable image. A shard is written whole or not at all; --resume skips every image a
finished shard holds, after checking that the same config, model and precision made them (OUT_DIR/_run.json).
--vs-infer also runs tools/infer.py's loop on the same images and prints both speeds and whether every record is
identical.
Needs Ray: pip install -r requirements-ray.txt
"""
import argparse
import signal
import sys
import tempfile
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import add_config_args, add_runtime_args, load_config_from_args, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    add_runtime_args(parser)
    parser.add_argument("--input", required=True, help="a folder (label = sub-folder), glob or list file of images")
    parser.add_argument("--output", required=True, type=Path, help="directory for the result shards")
    parser.add_argument("--address", help="an existing Ray cluster: auto (after ray start --head) or "
                                          "ray://HOST:10001; default: a local Ray on this machine")
    parser.add_argument("--workers", type=int, default=1, help="predictor actors (default: 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor (Paddle-TRT on GPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0,
                        help="CPUs per actor; CPU predictors use this many math threads (default: 1)")
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    parser.add_argument("--resume", action="store_true", help="continue a run: skip images in finished shards")
    parser.add_argument("--shard-size", type=int, default=1000, help="records per shard (default: 1000)")
    parser.add_argument("--vs-infer", action="store_true",
                        help="also run tools/infer.py on the same images; print both speeds and the agreement")
    args = parser.parse_args(argv)
    from deploy.batch_infer import ScaleOptions, Terminated, run_batch_inference, versus_infer

    def on_sigterm(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    cfg = load_config_from_args(args)
    options = ScaleOptions(args.input, args.output, args.address, args.workers, args.gpus_per_worker,
                           args.cpus_per_worker, args.format, args.resume, args.shard_size)
    try:
        summary = run_batch_inference(cfg, options, quiet=args.quiet)
    except (Terminated, KeyboardInterrupt) as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (SIGINT)"
        print(f"error: {how}; the finished shards in {args.output} are kept: rerun with --resume to finish",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    print(summary.line())
    print("\n".join(summary.worker_lines()))
    if args.vs_infer:
        with tempfile.TemporaryDirectory() as scratch:
            print(versus_infer(cfg, options, summary, Path(scratch)).line())


if __name__ == "__main__":
    run_tool(main)

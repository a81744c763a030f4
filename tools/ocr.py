"""The OCR system (det -> cls -> rec), each stage at its own precision:

  python tools/ocr.py -c configs/ppocr_system.yml --image DOC|DIR|LIST [--output out.json] [--visualize DIR]
  python tools/ocr.py -c configs/ppocr_system.yml --det-precision int8 --rec-precision int8
  python tools/ocr.py -c configs/ppocr_system.yml --compare int8=det.precision=int8,rec.precision=int8 \
      --output-dir reports/ocr_system

Prints the lines of each document and a summary; with PaddleOCR det labels (a list file of 'path<TAB>[{"transcription":
..., "points": ...}]' lines, as data.images of the config) also the end-to-end line precision / recall / F1.
--compare runs the system again with other settings over the same documents and prints them side by side with
the config as given (the reference), plus each run's F1 against the reference's lines; --output-dir writes
report.json (task ocr_system), report.md and accuracy.png.
"""
import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import PRECISIONS, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="OCR system YAML config")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. -o det.precision=int8 -o drop_score=0.6 (repeatable)")
    parser.add_argument("--image", help="a document, a folder, a glob or a list file (default: data.images)")
    parser.add_argument("--output", type=Path, help="write every document's boxes, texts and scores to this JSON")
    parser.add_argument("--visualize", type=Path, metavar="DIR", help="write <name>_ocr.png per document here")
    parser.add_argument("--limit", type=int, help="only the first N documents")
    for stage in ("det", "cls", "rec"):
        parser.add_argument(f"--{stage}-precision", choices=PRECISIONS, help=f"shortcut for -o {stage}.precision=")
    parser.add_argument("--no-cls", action="store_true", help="skip the direction classifier")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                        help="also run with these overrides and compare, e.g. "
                             "int8=det.precision=int8,rec.precision=int8")
    parser.add_argument("--output-dir", type=Path, help="with --compare: write report.json, report.md, accuracy.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    args = parser.parse_args(argv)
    from deploy.config.loader import load_ocr_system_config
    from deploy.ocr import compare_systems, parse_system_compare, run_ocr
    from deploy.report.report import console_text

    shortcuts = [f"{s}.precision={getattr(args, f'{s}_precision')}" for s in ("det", "cls", "rec")
                 if getattr(args, f"{s}_precision")]
    overrides = shortcuts + (["cls.enabled=false"] if args.no_cls else []) + args.override
    cfg = load_ocr_system_config(args.config, overrides)
    if args.compare:
        variants = [parse_system_compare(text) for text in args.compare]
        stages = [s for s in (cfg.det, cfg.cls, cfg.rec) if s is not None and s.enabled]
        runs = [("fp32" if all(s.precision == "fp32" for s in stages) else "config", cfg)]
        runs += [(label, load_ocr_system_config(args.config, overrides + extra)) for label, extra in variants]
        data = compare_systems(runs, images=args.image, limit=args.limit, output_dir=args.output_dir,
                               quiet=args.quiet)
        print(console_text(data))
        if args.output_dir:
            print(f"report: {args.output_dir / 'report.md'}")
        return
    summary = run_ocr(cfg, images=args.image, output=args.output, visualize=args.visualize, limit=args.limit,
                      quiet=args.quiet)
    print(summary.line())


if __name__ == "__main__":
    run_tool(main)

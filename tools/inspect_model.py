"""Inspect a model without running it: python tools/inspect_model.py -c CONFIG | --model DIR_OR_FILE [--json]

Shows the inputs, whether the program is quantized (and by which ops), its op counts, and with --weights the
weight tensor of every conv / matmul op (the names calibration.skip_tensors takes).
"""
import argparse
import json
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import load_config_from_args, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", help="a YAML config (its model section is inspected)")
    source.add_argument("--model", type=Path, help="a model dir, or a .pdmodel/.json program file")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--weights", action="store_true", help="list every conv / matmul weight tensor")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from deploy.config.loader import ModelConfig
    from deploy.engines.model import describe_model, ensure_model, inspect_model

    if args.config:
        model_cfg = load_config_from_args(args).model
    else:
        path = args.model.resolve()
        model_cfg = ModelConfig(file=path) if path.is_file() else ModelConfig(dir=path)
    info = inspect_model(ensure_model(model_cfg, quiet=args.quiet))
    summary = describe_model(info)
    if not args.weights:
        summary.pop("weights")
    print(json.dumps(summary, indent=2) if args.json else "\n".join(f"{k:<10} {v}" for k, v in
                                                                      _lines(summary)))


def _lines(summary):
    yield "program", f"{summary['program']} ({summary['format']})"
    yield "params", f"{summary['params']} ({summary['params_mb']:.2f} MB)"
    for feed in summary["inputs"]:
        yield "input", f"{feed['name']} [{', '.join(map(str, feed['shape']))}] {feed['dtype']}"
    quant = ", ".join(f"{k} x{v}" for k, v in summary["quant_ops"].items())
    yield "quantized", "true (" + quant + ")" if summary["quantized"] else "false"
    yield "ops", ", ".join(f"{k} x{v}" for k, v in summary["ops"].items())
    for name, weight in summary.get("weights", {}).items():
        yield "weight", f"{name} [{', '.join(map(str, weight['shape']))}] ({weight['op']})"


if __name__ == "__main__":
    run_tool(main)

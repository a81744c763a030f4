"""Environment probe: python tools/env.py [--json]"""
import argparse
import json
from dataclasses import asdict

import _bootstrap  # noqa: F401
from deploy.cli import run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description="What this Paddle build and machine can run.")
    parser.add_argument("--json", action="store_true", help="print the probe as JSON")
    args = parser.parse_args(argv)
    from deploy.env import capability_rows, probe
    from deploy.env import format_env

    env = probe()
    if args.json:
        print(json.dumps({**asdict(env), "capabilities": capability_rows(env)}, indent=2))
    else:
        print(format_env(env, capability_rows(env)))


if __name__ == "__main__":
    run_tool(main)

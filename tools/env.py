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
    from deploy.env import capability_rows, format_env, int8_tensor_cores, probe, trt_int8_path, trt_int8_reasons

    env = probe()
    if args.json:
        print(json.dumps({**asdict(env), "capabilities": capability_rows(env),
                          "trt_int8": {"paths": trt_int8_reasons(env), "auto": trt_int8_path("auto", env)},
                          "gpu_int8": [int8_tensor_cores(c) for c in env.gpu_capabilities]}, indent=2))
    else:
        print(format_env(env, capability_rows(env)))


if __name__ == "__main__":
    run_tool(main)

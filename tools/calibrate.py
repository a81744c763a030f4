"""INT8 calibration: python tools/calibrate.py -c configs/lenet_mnist.yml

runtime.backend=trt: on the implicit INT8 path (TensorRT < 10.1 by default) writes the Paddle-TRT calibration
table (needs the GPU); on the explicit path (runtime.trt.int8_mode=explicit, the default from TensorRT 10.1) writes a
Q/DQ model for enable_tensorrt_explicit_quantization to <model dir>/_opt_cache/int8_trt_qdq (any machine:
add --device cpu to a GPU config). runtime.backend=paddle: a PaddleSlim post-training quantized model for oneDNN;
openvino: an NNCF-quantized IR. All are recorded in <model dir>/_opt_cache/calibration.json.

With --collect-shapes it instead runs the calibration images through a native predictor (GPU, or CPU on a CPU
build) and writes the TensorRT shape ranges that runtime.trt.dynamic_shape.mode=tuned reads
(default <model dir>/_opt_cache/shape_range_info.pbtxt).
"""
import argparse
from pathlib import Path

import _bootstrap  # noqa: F401
from deploy.cli import add_config_args, add_runtime_args, load_config_from_args, run_tool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    add_runtime_args(parser, precision=False)
    parser.add_argument("--images", help="calibration images (default: calibration.images)")
    parser.add_argument("--num-images", type=int, help="how many images (default: calibration.num_images)")
    parser.add_argument("--algo", help="CPU quantization algorithm: hist (default), KL, mse, avg, abs_max, emd")
    parser.add_argument("--allow-fewer", action="store_true", default=None,
                        help="proceed with a warning when fewer readable images than asked are found")
    parser.add_argument("--output-dir", type=Path, help="the quantized model's dir (default: calibration.output_dir "
                                                        "on CPU, <model dir>/_opt_cache/int8_trt_qdq for TensorRT)")
    check = parser.add_argument_group("the INT8 check and the accuracy budget")
    check.add_argument("--max-drop", type=float, metavar="POINTS",
                       help="keep the fewest layers FP32 so that INT8 loses at most POINTS of the task's metric "
                            "(of agreement with FP32 on unlabelled check images); calibration.max_drop")
    check.add_argument("--check-images", metavar="SRC", help="images to score INT8 on (folder, glob or list file; "
                       "labelled or not); default: calibration images not sampled; calibration.check_images")
    check.add_argument("--check-num", type=int, metavar="N", help="how many check images (0: no check); "
                       "calibration.check_num")
    check.add_argument("--max-trials", type=int, metavar="N", help="most scored trials the search may run; "
                       "calibration.max_trials")
    check.add_argument("--accept-best", action="store_true", default=None,
                       help="install the best model found even when it is over --max-drop")
    parser.add_argument("--collect-shapes", action="store_true",
                        help="collect TensorRT shape ranges for dynamic_shape.mode=tuned instead of calibrating")
    args = parser.parse_args(argv)
    if args.collect_shapes:
        from deploy.int8.shapes import collect_shapes

        result = collect_shapes(load_config_from_args(args), images=args.images, num_images=args.num_images,
                                allow_fewer=args.allow_fewer, quiet=args.quiet)
        print(result.line())
        return
    from deploy.int8.calibration import calibrate

    flags = {"algo": args.algo, "max_drop": args.max_drop, "check_images": args.check_images,
             "check_num": args.check_num, "max_trials": args.max_trials, "accept_best": args.accept_best}
    cfg = load_config_from_args(args, [f"calibration.{key}={value}" for key, value in flags.items()
                                       if value is not None])
    result = calibrate(cfg, images=args.images, num_images=args.num_images, allow_fewer=args.allow_fewer,
                       output_dir=args.output_dir, quiet=args.quiet)
    print(f"calibrated {result.target} INT8 from {result.images} images in {result.seconds:.1f} s: "
          f"{', '.join(str(p) for p in result.artifacts)}; manifest {result.manifest}")
    for line in result.lines:
        print(line)


if __name__ == "__main__":
    run_tool(main)

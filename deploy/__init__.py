"""Deploy Paddle inference models with Paddle Inference: TensorRT subgraphs on GPUs, oneDNN on CPUs.

PaddleSlim and Paddle-TRT's ``enable_tensorrt_engine`` need the classic ``.pdmodel`` program format, which
Paddle 3.x only writes and quantizes with the PIR API switched off. The flag must be set before paddle is
first imported, so it is set here, where every entry point passes first.
"""
import os

os.environ.setdefault("FLAGS_enable_pir_api", "0")

__version__ = "0.1.0"

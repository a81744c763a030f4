"""INT8 between engines and tasks: calibration, quantization-aware training, TensorRT shape collection."""

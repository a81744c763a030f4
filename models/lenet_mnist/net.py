"""LeNet for 28x28 grayscale MNIST digits, as used by the seed model of this toolkit.

Every activation, pool and the flatten are ``nn.Layer`` modules (no functional calls), so a quantizer
(PaddleSlim QAT / PTQ) sees and can observe each of them.

Training and QAT use :class:`LeNet`, whose ``forward`` returns logits. The exported inference model ends
with ``nn.Softmax`` and outputs probabilities. Both share one set of parameter names (``conv1.weight``,
``conv1.bias``, ``conv2.*``, ``fc1.*``, ``fc2.*``), because the softmax is a parameter-free submodule of
the same class, switched on by the ``with_softmax`` flag. There are three ways to get the export wrapper:

* ``LeNetWithSoftmax()`` then ``set_state_dict(paddle.load("weights/lenet.pdparams"))``;
* ``LeNet(with_softmax=True)``, the same thing;
* on a model already built and trained (e.g. after ``QAT.quantize(model)`` and fine-tuning), set
  ``model.with_softmax = True`` just before ``paddle.jit.save`` / ``save_quantized_model``.

A state dict saved from any of them loads into a fresh ``LeNet()``.
"""
from __future__ import annotations

import os

# Classic .pdmodel export needs the PIR API off before paddle is first imported (no effect if it already is).
os.environ.setdefault("FLAGS_enable_pir_api", "0")

import paddle  # noqa: E402
from paddle import nn  # noqa: E402

NUM_CLASSES = 10
IMAGE_SIZE = 28


class LeNet(nn.Layer):
    """Conv(1->32,5) ReLU MaxPool, Conv(32->64,5) ReLU MaxPool, FC(3136->1024) ReLU, FC(1024->10)."""

    def __init__(self, num_classes: int = NUM_CLASSES, with_softmax: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(1, 32, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2D(2, 2)
        self.conv2 = nn.Conv2D(32, 64, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2D(2, 2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 7 * 7, 1024)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(1024, num_classes)
        self.softmax = nn.Softmax(axis=-1)  # no parameters: the state dict is the same either way
        self.with_softmax = with_softmax

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Map a [N, 1, 28, 28] float32 batch to [N, 10] logits, or probabilities if ``with_softmax``."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.fc2(x)
        if self.with_softmax:
            x = self.softmax(x)
        return x


class LeNetWithSoftmax(LeNet):
    """The export wrapper: :class:`LeNet` with ``nn.Softmax`` as the last layer, same parameter names."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(num_classes, with_softmax=True)

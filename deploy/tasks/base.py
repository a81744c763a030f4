"""The task interface: what a model's numbers mean.

A task builds ALL feeds of a model by input name from a batch (the image tensor plus what the preprocess records
give, like im_shape and scale_factor), turns ALL outputs into one result per image, writes a result as a JSON
record, reads labels, scores results against labels (the task's metric) and two runs' results against each
other (agreement: what "INT8 agrees with FP32" means for this task). infer, eval, benchmark and calibration
only ever call this interface.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol, Sequence

import numpy as np

from deploy.config.loader import DeployConfig
from deploy.data.sources import Batch
from deploy.errors import DataError

Metrics = dict[str, Optional[float]]


class Engine(Protocol):
    """What a task needs of a predictor: its input names and one run from named arrays to named arrays."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""


@dataclass(frozen=True)
class MetricColumn:
    """A metric as the report shows it: its report.json key, a column header, and how to format it."""

    key: str
    header: str
    kind: str = "pct"  # "pct": a fraction shown as a percentage; "num": a number; "diff": a small difference

    def to_json(self) -> dict:
        return {"key": self.key, "header": self.header, "kind": self.kind}


class Task(ABC):
    """One kind of model output; subclasses set ``name``, ``metrics`` and ``agreements``."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[MetricColumn, ...]]  # the task's metric keys in report.json; the first is the headline
    agreements: ClassVar[tuple[MetricColumn, ...]]  # agreement with the reference run; the first is "agreement"
    IMAGE_INPUTS: ClassVar[tuple[str, ...]] = ("x", "image", "images", "input", "inputs")
    splits_long_lines: ClassVar[bool] = False  # runs a line wider than max_width in pieces (resize_keep_ratio)

    def __init__(self, cfg: DeployConfig):
        self.cfg = cfg

    # ------------------------------------------------------------------ labels

    def read_label(self, text: str) -> Any:
        """The label after the path in a list file (ValueError when malformed)."""
        raise ValueError(f"the {self.name} task reads no labels from list files")

    def folder_label(self, name: str) -> Any:
        """The label an image's sub-folder stands for (classification only), else None."""
        return None

    @abstractmethod
    def label_json(self, label: Any) -> Any:
        """A label as JSON (beside the result in tools/infer.py --output)."""

    # ------------------------------------------------------------------ model I/O

    def image_input(self, input_names: Sequence[str]) -> str:
        """Which model input takes the image tensor: the only one, or the one with a usual image name."""
        if len(input_names) == 1:
            return input_names[0]
        named = [n for n in input_names if n in self.IMAGE_INPUTS]
        if len(named) != 1:
            raise DataError(f"cannot tell which of the model inputs {list(input_names)} takes the image for the "
                            f"{self.name} task; name it one of {', '.join(self.IMAGE_INPUTS)}")
        return named[0]

    def feeds(self, batch: Batch, input_names: Sequence[str]) -> dict[str, np.ndarray]:
        """All model inputs by name; the base task feeds the image tensor only."""
        return {self.image_input(input_names): batch.array}

    def predict(self, engine: Engine, batch: Batch) -> list[Any]:
        """Feed a batch, run it, post-process every output: one result per image of the batch."""
        return self.postprocess(engine.run(self.feeds(batch, engine.input_names)), batch)

    @abstractmethod
    def postprocess(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[Any]:
        """Outputs by name -> one result per image of ``batch``."""

    @abstractmethod
    def record(self, result: Any) -> dict:
        """The JSON record of one result (tools/infer.py --output)."""

    @abstractmethod
    def describe(self, result: Any) -> str:
        """One short line for the console."""

    # ------------------------------------------------------------------ scoring

    @abstractmethod
    def score(self, results: Sequence[Any], labels: Sequence[Any]) -> Metrics:
        """The task's metrics (fractions 0-1) over the images whose label is known; None when none is."""

    @abstractmethod
    def agreement(self, results: Sequence[Any], reference: Sequence[Any]) -> Metrics:
        """How closely ``results`` follow the reference run's on the same images; key 'agreement' first."""

    def headline(self, metrics: Metrics) -> str:
        """'hmean 93.20%' from score()'s metrics (the first metric)."""
        column = self.metrics[0]
        value = metrics.get(column.key)
        return f"{column.header} " + ("n/a" if value is None else f"{100 * value:.2f}%")


def known(results: Sequence[Any], labels: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The (result, label) pairs whose label is known."""
    pairs = [(r, lab) for r, lab in zip(results, labels) if lab is not None]
    return [r for r, _ in pairs], [lab for _, lab in pairs]

"""The one predictor factory: a plan's backend picks the engine; every engine has the same interface (input and
output names, run(feeds by name) -> outputs by name, a context manager)."""
from __future__ import annotations

from typing import Union

from deploy.engines.openvino import OpenVinoPredictor
from deploy.engines.paddle import Predictor
from deploy.engines.plan import PredictorPlan

AnyPredictor = Union[Predictor, OpenVinoPredictor]


def create_predictor(plan: PredictorPlan) -> AnyPredictor:
    """The predictor of the plan's engine (Paddle Inference for paddle and trt, OpenVINO for openvino)."""
    return OpenVinoPredictor(plan) if plan.backend == "openvino" else Predictor(plan)

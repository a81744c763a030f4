"""The task a config names (``task:``), built from its config."""
from __future__ import annotations

from deploy.config.loader import DeployConfig
from deploy.data.pipeline import ResizeKeepRatio
from deploy.errors import ConfigError
from deploy.tasks.base import Task
from deploy.tasks.classification import ClassificationTask
from deploy.tasks.detection import DetectionTask
from deploy.tasks.ocr_det import OcrDetTask
from deploy.tasks.ocr_rec import OcrRecTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, OcrDetTask, OcrRecTask,
                                                             DetectionTask)}


def build_task(cfg: DeployConfig) -> Task:
    """The config's task (the loader has checked the name against TASKS' keys)."""
    task = TASKS[cfg.task]
    if not task.splits_long_lines and any(isinstance(op, ResizeKeepRatio) and op.long_lines == "split"
                                          for op in cfg.preprocess):
        raise ConfigError(f"{cfg.source}: resize_keep_ratio long_lines: split needs the ocr_rec task, which "
                          f"recognises a long line in pieces; the {task.name} task takes one input per image: set "
                          "long_lines: squeeze")
    return task(cfg)

"""The task a config names (``task:``), built from its config."""
from __future__ import annotations

from deploy.config.loader import DeployConfig
from deploy.tasks.base import Task
from deploy.tasks.classification import ClassificationTask
from deploy.tasks.detection import DetectionTask
from deploy.tasks.ocr_det import OcrDetTask
from deploy.tasks.ocr_rec import OcrRecTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (ClassificationTask, OcrDetTask, OcrRecTask,
                                                             DetectionTask)}


def build_task(cfg: DeployConfig) -> Task:
    """The config's task (the loader has checked the name against TASKS' keys)."""
    return TASKS[cfg.task](cfg)

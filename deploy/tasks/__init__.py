"""Tasks: what the numbers mean. One module per task, all with the interface of ``tasks.base.Task``."""

"""The value-chain model zoo: tasks (data schema + model + loss + metrics), kept free of Flower.

Everything here is plain pandas/PyTorch so the machine learning can be tested and run
without a federation; `client/` and `coordinator/` put it on the network.
"""

from models.errors import SangsaengError, SiteDataError, TaskSpecError
from models.tasks import TaskSpec, builtin_tasks, get_task, load_task_spec

__all__ = [
    "SangsaengError",
    "SiteDataError",
    "TaskSpec",
    "TaskSpecError",
    "builtin_tasks",
    "get_task",
    "load_task_spec",
]

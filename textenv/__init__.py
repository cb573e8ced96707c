"""Alignment tasks as Gymnasium environments that return rewards for generated text."""

from textenv.task import Example, Task, TaskError, columns_of

__all__ = ["Example", "Task", "TaskError", "columns_of"]

"""Derived features: arithmetic on a row's own measured columns, declared in the task spec.

A derived feature is computed at every site from its own rows, after validation and before
scaling, with one expression shared by the whole federation; it is then a numeric feature
like any other (federated scaling, ranges, the model's inputs). Column names go between
backticks; the expression may use numbers, ``pi``, ``+ - * /`` and parentheses, nothing else::

    [task.derived]
    "Power [W]" = "`Torque [Nm]` * `Rotational speed [rpm]` * 2 * pi / 60"

>>> import pandas as pd
>>> expr = DerivedExpression.parse("`Process [K]` - `Air [K]`")
>>> expr.columns
('Process [K]', 'Air [K]')
>>> expr.evaluate(pd.DataFrame({"Air [K]": [300.0], "Process [K]": [310.5]})).tolist()
[10.5]
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.errors import TaskSpecError

__all__ = ["DerivedExpression", "CONSTANTS"]

CONSTANTS: dict[str, float] = {"pi": math.pi}
_OPERATORS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_QUOTED = re.compile(r"`([^`]*)`")
_PLACEHOLDER = "__column_"  # stands for a backticked name while Python's parser reads the rest


@dataclass(frozen=True)
class DerivedExpression:
    """A parsed, checked expression: only column references, numbers, ``pi`` and + - * /."""

    text: str
    columns: tuple[str, ...]  # the columns it reads, in order of first use
    _tree: ast.expr = field(compare=False, repr=False)
    _placeholders: Mapping[str, str] = field(compare=False, repr=False, default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DerivedExpression:
        """Parse `text`; raises `TaskSpecError` naming what is not allowed."""
        if not isinstance(text, str) or not text.strip():
            raise TaskSpecError("the expression is empty")
        names: dict[str, str] = {}  # placeholder identifier -> column name

        def quote(match: re.Match[str]) -> str:
            column = match.group(1)
            if not column.strip():
                raise TaskSpecError(f"empty column name `` in '{text}'")
            placeholder = f"{_PLACEHOLDER}{len(names)}"
            names[placeholder] = column
            return placeholder

        if text.count("`") % 2:
            raise TaskSpecError(f"unbalanced backtick in '{text}'")
        if _PLACEHOLDER in _QUOTED.sub("", text):
            raise TaskSpecError(f"unknown name in '{text}' (put column names between backticks)")
        try:
            tree = ast.parse(_QUOTED.sub(quote, text).strip(), mode="eval").body
        except SyntaxError:
            raise TaskSpecError(f"'{text}' is not an arithmetic expression") from None
        columns: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                if node.id in names:
                    columns.append(names[node.id])
                elif node.id not in CONSTANTS:
                    raise TaskSpecError(f"unknown name '{node.id}' in '{text}' (put column names between backticks)")
            elif isinstance(node, ast.Constant):
                if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                    raise TaskSpecError(f"only numbers may appear as constants in '{text}'")
            elif isinstance(node, ast.BinOp):
                if type(node.op) not in _OPERATORS:
                    raise TaskSpecError(f"only + - * / are allowed in '{text}'")
            elif isinstance(node, ast.UnaryOp):
                if not isinstance(node.op, ast.USub | ast.UAdd):
                    raise TaskSpecError(f"only + - * / are allowed in '{text}'")
            elif not isinstance(node, ast.Load | ast.operator | ast.unaryop):
                raise TaskSpecError(f"only + - * / on columns and numbers are allowed in '{text}'")
        if not columns:
            raise TaskSpecError(f"'{text}' uses no column")
        return cls(text, tuple(dict.fromkeys(columns)), tree, names)

    def evaluate(self, frame: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
        """The feature for every row, as float64 (non-finite where the arithmetic is)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value = _evaluate(self._tree, frame, self._placeholders)
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (len(frame[self.columns[0]]),)).copy()


def _evaluate(node: ast.expr, frame: pd.DataFrame | Mapping[str, np.ndarray], names: Mapping[str, str]) -> Any:
    if isinstance(node, ast.Name):
        if node.id in names:
            return np.asarray(frame[names[node.id]], dtype=np.float64)
        return CONSTANTS[node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):  # parse() let only numbers through
        return float(node.value)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, frame, names), _evaluate(node.right, frame, names)
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, frame, names)
        return -value if isinstance(node.op, ast.USub) else value
    raise AssertionError(f"unchecked node {ast.dump(node)}")  # parse() admits nothing else

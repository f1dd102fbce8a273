"""The operator: kopf watches feeding a level-triggered controller that renders, applies and reports."""

from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.runner import run_operator

__all__ = ["OperatorConfig", "run_operator"]

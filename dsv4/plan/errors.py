"""Typed errors of the planner; every message names the value that was rejected and what was expected."""


class PlanError(ValueError):
    """A planning request that cannot be answered: unknown device or config, context out of range, bad sizes."""

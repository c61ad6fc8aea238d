"""Validation sets: the JSON-lines format users write by hand, validated with errors naming file and line."""

from autotune.data.schema import Example, load_validation_set

__all__ = ["Example", "load_validation_set"]

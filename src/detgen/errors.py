"""Exceptions that the CLI turns into one line and a non-zero exit code.

Every message names the offending file, column or key and says what was expected.
"""

from __future__ import annotations


class DetgenError(Exception):
    """Base class of every error detgen reports to the user."""


class DataError(DetgenError):
    """Bad input data: missing/misspelled column, NaN/inf, empty or truncated file, bad value."""


class ConfigError(DetgenError):
    """Bad configuration: unknown key, wrong type, inconsistent settings."""


class SchemaError(DetgenError):
    """A run dir or file whose columns, versions or shapes do not match what is expected."""

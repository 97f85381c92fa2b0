"""The error types a user sees for bad input, shared so that the tools catch one base.

Every message names the file (and, where it applies, the key, record or field), what was found
and what is allowed.
"""

from __future__ import annotations


class ResNeXtDetError(Exception):
    """Base of the errors this package raises on purpose."""


class BadFileError(ResNeXtDetError, ValueError):
    """A file the user gave (config, weights, annotations, results) cannot be used as it is."""


class ConfigError(BadFileError):
    """A config file or override is malformed, unsafe, or holds a value that is not allowed."""

"""Tests of the benchmark harness (collected by pytest: ``testpaths`` in pyproject.toml)."""

"""The command-line tools' logic, as ``main(argv) -> exit code`` functions.

``tools/*.py`` (for a checkout) and the ``resnext-det`` console command (for a pip install,
:mod:`resnext_det.cli`) both call these, so a tool behaves the same either way.
"""

"""Refuse to score a detector whose checkpoint leaves parameters at their random initialisation.

A backbone-only export, or a checkpoint whose heads have another shape (other NUM_CLASSES),
loads "successfully": the missing or mismatched keys show only in the INFO table, and the
randomly initialised heads then get a score (one such model "beat" a trained baseline by +7.4
AP@0.5). Evaluation, comparison and ``--eval-only`` call :func:`check_complete_weights` first;
training is unaffected (ImageNet weights cover the backbone only, on purpose).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from torch import nn

from ..errors import BadFileError

__all__ = ["PartialWeightsError", "check_complete_weights", "check_load_report", "key_groups"]


class PartialWeightsError(BadFileError):
    """The weights leave some of the detector's parameters missing or of another shape."""


def key_groups(keys: list[str], depth: int = 2) -> dict[str, int]:
    """Keys grouped by their first ``depth`` dotted components, in first-seen order, with how many
    keys each holds: ``roi_heads.box_predictor.cls_score.weight`` -> ``roi_heads.box_predictor.*``.
    """
    groups: dict[str, int] = defaultdict(int)
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:depth]) + ".*" if len(parts) > depth else k
        groups[head] += 1
    return dict(groups)


def check_load_report(report: Any, *, allow_partial: bool = False, what: str = "") -> list[str]:
    """Raise :class:`PartialWeightsError` if ``report`` (a
    :class:`~resnext_det.weights.LoadReport`) left a detector parameter missing or mismatched.

    Args:
        report: what :func:`~resnext_det.weights.load_pretrained` or
            :func:`~resnext_det.weights.loader.plan_load` returned.
        allow_partial: only return the problems (the caller logs them) instead of raising.
        what: who is checking, for the message (e.g. ``"model 'X50', run 2"``).

    Returns:
        The problems, one line per group (``"roi_heads.box_predictor.*: missing (4 keys)"``);
        empty when every parameter was loaded.
    """
    problems = [
        f"{g}: missing ({n} key{'s' * (n != 1)})" for g, n in key_groups(report.missing).items()
    ]
    mismatched = key_groups([k for k, _, _ in report.shape_mismatched])
    first = {}
    for k, got, want in report.shape_mismatched:
        first.setdefault(next(g for g in key_groups([k])), (k, got, want))
    for g, n in mismatched.items():
        k, got, want = first[g]
        problems.append(
            f"{g}: shape mismatch ({n} key{'s' * (n != 1)}; e.g. {k}: checkpoint {tuple(got)} vs "
            f"model {tuple(want)})"
        )
    if problems and not allow_partial:
        who = f" for {what}" if what else ""
        raise PartialWeightsError(
            f"weights '{report.path}'{who} leave detector parameters at their random "
            f"initialisation: {'; '.join(problems)}. A score of such a model is meaningless (is it "
            "a backbone-only export, or a checkpoint trained with another NUM_CLASSES?). Use a "
            "checkpoint of the whole detector, or allow partial weights explicitly "
            "(allow_partial_weights=True; --allow-partial-weights in the tools)."
        )
    return problems


def check_complete_weights(
    model: nn.Module,
    weights: str | os.PathLike | None,
    *,
    allow_partial: bool = False,
    what: str = "",
) -> list[str]:
    """Check, without loading, that ``weights`` give every parameter of ``model`` a value.

    Args:
        model: the detector the weights are for.
        weights: the checkpoint (any layout the project reads); None or "" means no weights at
            all, which leaves everything random.
        allow_partial: return the problems instead of raising.
        what: who is checking, for the message.

    Returns:
        The problems (see :func:`check_load_report`).

    Raises:
        PartialWeightsError: a parameter would stay randomly initialised.
    """
    from .loader import plan_load, read_weights

    if not weights:
        problem = "no weights at all: every parameter keeps its random initialisation"
        if not allow_partial:
            who = f" for {what}" if what else ""
            raise PartialWeightsError(
                f"no weights given{who} (MODEL.WEIGHTS is empty): {problem}. Give a trained "
                "checkpoint, or allow partial weights explicitly (allow_partial_weights=True; "
                "--allow-partial-weights in the tools)."
            )
        return [problem]
    _, report = plan_load(model, read_weights(weights))
    return check_load_report(report, allow_partial=allow_partial, what=what)

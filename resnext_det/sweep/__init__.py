"""The paper's experiment as one job: error against cardinality at equal complexity.

Xie et al. (2017) hold a network's complexity fixed and trade the bottleneck width d for the
cardinality C (Table 2, Sec. 3.1: C = 1, 2, 4, 8, 32 -> d = 64, 40, 24, 14, 4 at ResNeXt-50), and
report that error falls as C rises (Table 3); at twice the complexity, more paths beat a deeper or
a wider ResNet (Table 4). :func:`run_sweep` makes that experiment on a detector:

1. :func:`plan_sweep`: for each C the template's width at the config's depth and widths
   (:meth:`ResNeXtSpec.replace` with ``width_per_group=0``; C = 1 is the ResNet), optionally the
   2x-complexity models of Table 4 (:data:`KINDS`);
2. :func:`train_cells`: N runs of each, differing only in SEED, all in one pool of workers
   (:func:`~resnext_det.training.train_runs`, seed-major so that a stopped sweep has whole seeds);
3. :func:`evaluate_cell`: each run on the config's test set
   (:func:`~resnext_det.evaluation.compare_models`: its results json and figures);
4. :func:`write_report`: every variant against C = 1 by
   :func:`~resnext_det.evaluation.compare_results` (intervals over test images and training runs),
   each interval at the Bonferroni confidence over the family of comparisons, so that all of them
   hold together at the nominal level; ``sweep.{json,md,png}`` written all or nothing.

Every step is resumable: a cell (one variant, one seed) is ``OUT/<variant>/seed_<k>/``, trained
once (a killed run resumes from its checkpoint) and evaluated once into its ``evaluation/``. One
cell can be run on its own (:func:`run_cell`, a job of a cluster array) and the report built from
whatever cells are done (:func:`write_report` lists the missing ones). ``OUT/sweep_settings.json``
records what defines the cells; a sweep with other settings is refused there, naming the
difference.
"""

from __future__ import annotations

from .cells import (
    SweepResult,
    claim_out_dir,
    evaluate_cell,
    load_settings,
    run_cell,
    run_sweep,
    train_cells,
)
from .plan import (
    KINDS,
    OUTPUT_FILES,
    RESNET_BACKBONES,
    SETTINGS_FILE,
    SweepError,
    SweepPlan,
    SweepVariant,
    cell_state,
    plan_sweep,
)
from .report import _complexity, write_report  # noqa: F401  (_complexity: tests)

__all__ = [
    "KINDS",
    "OUTPUT_FILES",
    "RESNET_BACKBONES",
    "SETTINGS_FILE",
    "SweepError",
    "SweepResult",
    "SweepPlan",
    "SweepVariant",
    "cell_state",
    "claim_out_dir",
    "evaluate_cell",
    "load_settings",
    "plan_sweep",
    "run_cell",
    "run_sweep",
    "train_cells",
    "write_report",
]

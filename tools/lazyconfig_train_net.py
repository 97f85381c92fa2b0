#!/usr/bin/env python
"""Train or evaluate a detector from a LazyConfig (Python) file, as detectron2's
``tools/lazyconfig_train_net.py`` does, with the guarantees of ``tools/train_net.py``: atomic
checkpoints, exact ``--resume``, input conventions from ``train.init_checkpoint``, the
non-finite-loss guard. The logic lives in :mod:`resnext_det.lazy`.

A LazyConfig file is Python and runs when loaded: pass only files you trust. Overrides are
``key=value`` (hydra's syntax), after the flags.

Examples::

    python tools/lazyconfig_train_net.py --num-gpus 8 \\
        --config-file configs/lazy/faster_rcnn_X_50_32x4d_FPN_1x.py
    python tools/lazyconfig_train_net.py --config-file CFG.py --resume
    python tools/lazyconfig_train_net.py --config-file CFG.py --eval-only \\
        train.init_checkpoint=output/model_final.pth
    python tools/lazyconfig_train_net.py --config-file configs/lazy/tests/faster_rcnn_tiny.py \\
        --register synthetic_train ann.json images/ train.output_dir=out/tiny
"""

from __future__ import annotations

import os
import sys

# Run from a checkout without installing: make the repository's package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.lazy import run  # noqa: E402

if __name__ == "__main__":
    run()

"""Config keys that resnext-det adds to detectron2's.

Hyper-parameters of the network itself stay under detectron2's ``MODEL.RESNETS`` (``DEPTH``,
``NUM_GROUPS`` is the cardinality C, ``WIDTH_PER_GROUP`` the bottleneck width d, ...), so a
detectron2 model-zoo ResNeXt config works by changing only ``MODEL.BACKBONE.NAME``.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_resnext_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.RESNEXT`` (and the project's dataset keys) to ``cfg`` in place; returns it.

    Safe to call twice. Changes no detectron2 default.
    """
    if "RESNEXT" in cfg.MODEL:
        return cfg
    cfg.MODEL.RESNEXT = CN()
    # How a block's C paths are computed; all three give the same outputs from the same weights and
    # load the same checkpoints. "grouped" (the paper's form c: one 3x3 conv with C groups) is the
    # fast one: use it to train and run. "aggregated" (form a: C separate 1x1-3x3-1x1 paths, summed)
    # and "concat" (form b: C paths of 1x1 and 3x3, concatenated before one 1x1) exist to show and
    # test the equivalence, and for studying single paths.
    cfg.MODEL.RESNEXT.BLOCK_FORM = "grouped"
    # Store activations and weights in channels_last (NHWC) memory format. Same numbers, and grouped
    # 3x3 convs run faster in NHWC on recent CPUs and GPUs (see docs/benchmarks.md).
    cfg.MODEL.RESNEXT.CHANNELS_LAST = False

    # Datasets in COCO format registered by name before the model is built, each a list
    # [name, json_file, image_root]; the same as tools/train_net.py --register NAME JSON ROOT.
    cfg.DATASETS.COCO_REGISTER = []
    return cfg

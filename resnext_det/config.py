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
    # At inference (tools/train_net.py --eval-only, resnext_det.speed.apply_inference_config): fold
    # FrozenBN / eval-mode BN into the convolutions and use channels_last, i.e.
    # resnext_det.optimize_for_inference. Same fp32 outputs (within 1e-4 relative), faster; set
    # False only to time or debug the unmodified model.
    cfg.MODEL.RESNEXT.OPTIMIZE_FOR_INFERENCE = True
    # Mixed precision at inference: "" (fp32), "bfloat16" or "float16". Changes results slightly
    # (see docs/benchmarks.md for the measured differences); bfloat16 pays off on CPUs with
    # AVX-512 BF16 / AMX and on Ampere or newer GPUs, float16 on GPUs. Training AMP is detectron2's
    # SOLVER.AMP.ENABLED.
    cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE = ""
    # torch.compile the backbone at inference. Compiles once per input shape (minutes on a small
    # CPU; needs a C compiler), so use it for long evaluations with fixed-size inputs.
    cfg.MODEL.RESNEXT.COMPILE = False

    # Datasets in COCO format registered by name before the model is built, each a list
    # [name, json_file, image_root]; the same as tools/train_net.py --register NAME JSON ROOT.
    cfg.DATASETS.COCO_REGISTER = []

    # Ask torch for deterministic kernels (torch.use_deterministic_algorithms, warn-only; cuDNN
    # deterministic, no benchmarking). With SEED >= 0 and DATALOADER.NUM_WORKERS 0 a run killed
    # and resumed ends with the same weights as an uninterrupted one. Slower on GPUs: use it for
    # debugging and reproducibility checks, not for speed.
    cfg.DETERMINISTIC = False
    return cfg

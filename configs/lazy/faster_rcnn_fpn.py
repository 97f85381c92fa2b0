"""Faster R-CNN + FPN on the ResNeXt backbone, from detectron2's own ``configs/common``.

The LazyConfig twin of ``configs/Base-RCNN-FPN-torchvision.yaml``: detectron2's
``common/models/mask_rcnn_fpn.py`` without its mask branch, its ``common/data/coco.py``,
``common/optim.py``, ``common/coco_schedule.py`` (1x) and ``common/train.py``, with the bottom-up
network a ``LazyCall`` of :func:`resnext_det.make_resnext` and torchvision's ImageNet conventions.
The configs beside this one change only the backbone, the weights and the schedule.

Python configs run code when loaded: tools/lazyconfig_train_net.py loads only the file named
with --config-file (and what it imports).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from resnext_det import ResNeXtSpec, make_resnext

model = get_config("common/models/mask_rcnn_fpn.py").model
dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

# Faster R-CNN: no mask branch (MODEL.MASK_ON False).
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)
dataloader.train.mapper.use_instance_mask = False

# The project's backbone, as MODEL.RESNETS describes it in the yacs configs (res2..res5 for the
# FPN, the stem and res2 frozen as FREEZE_AT 2 does, FrozenBN).
model.backbone.bottom_up = L(make_resnext)(
    spec=L(ResNeXtSpec)(
        depth=50,
        cardinality=32,
        width_per_group=4,
        norm="FrozenBN",
        stride_in_1x1=False,
    ),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=2,
)

# torchvision's ImageNet conventions (see configs/Base-RCNN-FPN-torchvision.yaml): RGB, 0-255
# pixels normalised by ImageNet's mean/std x 255, stride in the 3x3. tools/lazyconfig_train_net.py
# checks them against train.init_checkpoint and stops on a mismatch.
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
dataloader.train.mapper.image_format = "RGB"

# pycocotools' reference COCOeval (detectron2's fast one is compiled C++ this install may lack).
dataloader.evaluator.use_fast_impl = False

train.init_checkpoint = "torchvision://resnext50_32x4d.IMAGENET1K_V1"

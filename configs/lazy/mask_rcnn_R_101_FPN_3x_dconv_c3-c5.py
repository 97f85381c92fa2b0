"""Mask R-CNN R-101 FPN 3x, deformable res3-res5: the LazyConfig of
configs/mask_rcnn_R_101_FPN_3x_dconv_c3-c5.yaml, the ResNet of the dconv pair (C = 1, d = 64) with
the zoo's MSRA R-101 file and its conventions (BGR, mean subtraction only, stride in the 1x1)."""

import os

from detectron2.config import LazyConfig

# Loaded by path: a file name with "-" (the yacs twin's) cannot be a relative import.
_x = LazyConfig.load(
    os.path.join(os.path.dirname(__file__), "mask_rcnn_X_101_32x8d_FPN_3x_dconv_c3-c5.py")
)
model, dataloader, optimizer, lr_multiplier, train = (
    _x.model,
    _x.dataloader,
    _x.optimizer,
    _x.lr_multiplier,
    _x.train,
)

model.backbone.bottom_up.spec.update(cardinality=1, width_per_group=64, stride_in_1x1=True)
model.pixel_std = [1.0, 1.0, 1.0]
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"

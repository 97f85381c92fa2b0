"""Keypoint R-CNN R-101 FPN 3x: the LazyConfig of configs/keypoint_rcnn_R_101_FPN_3x.yaml, the
ResNet of the keypoint pair (C = 1, d = 64) with the zoo's MSRA R-101 file and its conventions
(BGR, mean subtraction only, stride in the 1x1)."""

from .keypoint_rcnn_X_101_32x8d_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.spec.update(cardinality=1, width_per_group=64, stride_in_1x1=True)
model.pixel_std = [1.0, 1.0, 1.0]
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"

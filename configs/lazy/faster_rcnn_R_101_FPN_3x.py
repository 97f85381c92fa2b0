"""Faster R-CNN R-101 FPN 3x: the LazyConfig of configs/faster_rcnn_R_101_FPN_3x.yaml (the ResNet
of the X-101-32x8d pair's schedule: C = 1, d = 64)."""

from .faster_rcnn_X_101_32x8d_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.spec.update(depth=101, cardinality=1, width_per_group=64)
train.init_checkpoint = "torchvision://resnet101.IMAGENET1K_V1"

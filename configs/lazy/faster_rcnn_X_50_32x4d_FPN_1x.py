"""Faster R-CNN X-50-32x4d FPN 1x: the LazyConfig of configs/faster_rcnn_X_50_32x4d_FPN_1x.yaml."""

from .faster_rcnn_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.spec.update(depth=50, cardinality=32, width_per_group=4)
train.init_checkpoint = "torchvision://resnext50_32x4d.IMAGENET1K_V1"

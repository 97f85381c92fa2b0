"""Faster R-CNN R-50 FPN 1x: the LazyConfig of configs/faster_rcnn_R_50_FPN_1x.yaml (the ResNet
of the X-50-32x4d pair: C = 1, d = 64, nothing else changed)."""

from .faster_rcnn_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.spec.update(depth=50, cardinality=1, width_per_group=64)
train.init_checkpoint = "torchvision://resnet50.IMAGENET1K_V1"

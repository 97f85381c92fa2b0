"""Mask R-CNN R-50 FPN, 100 epochs of large-scale jitter: the ResNet of the X-50-32x4d LSJ pair
(C = 1, d = 64, nothing else changed)."""

from .mask_rcnn_X_50_32x4d_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.spec.update(cardinality=1, width_per_group=64)

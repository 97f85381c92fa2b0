"""Faster R-CNN X-101-32x8d FPN 3x: the LazyConfig of configs/faster_rcnn_X_101_32x8d_FPN_3x.yaml
(detectron2's 3x schedule: 270k iterations of 16 images, LR divided by 10 at 210k and 250k)."""

from detectron2.model_zoo import get_config

from .faster_rcnn_fpn import dataloader, model, optimizer, train

model.backbone.bottom_up.spec.update(depth=101, cardinality=32, width_per_group=8)
train.init_checkpoint = "torchvision://resnext101_32x8d.IMAGENET1K_V1"
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_3x
train.max_iter = 270000

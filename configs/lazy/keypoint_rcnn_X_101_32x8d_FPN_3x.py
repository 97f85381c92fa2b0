"""Keypoint R-CNN X-101-32x8d FPN 3x: the LazyConfig of
configs/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml, from detectron2's own
``common/models/keypoint_rcnn_fpn.py`` and ``common/data/coco_keypoint.py`` with the project's
backbone and the zoo's FAIR X-101-32x8d file and conventions (BGR, per-channel pixel std, stride
in the 3x3). Its ResNet twin is keypoint_rcnn_R_101_FPN_3x.py beside it.
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from resnext_det import ResNeXtSpec, make_resnext

model = get_config("common/models/keypoint_rcnn_fpn.py").model
dataloader = get_config("common/data/coco_keypoint.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_3x
train = get_config("common/train.py").train

model.backbone.bottom_up = L(make_resnext)(
    spec=L(ResNeXtSpec)(
        depth=101,
        cardinality=32,
        width_per_group=8,
        norm="FrozenBN",
        stride_in_1x1=False,
    ),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=2,
)
model.pixel_std = [57.375, 57.120, 58.395]
# pycocotools' reference COCOeval (detectron2's fast one is compiled C++ this install may lack).
dataloader.evaluator.use_fast_impl = False

train.init_checkpoint = "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"
train.max_iter = 270000

"""Mask R-CNN X-101-32x8d FPN 3x, deformable res3-res5: the LazyConfig of
configs/mask_rcnn_X_101_32x8d_FPN_3x_dconv_c3-c5.yaml, from detectron2's own
``common/models/mask_rcnn_fpn.py`` with the project's backbone (DCNv1, one offset group, on
torchvision's deform_conv2d) and the zoo's FAIR X-101-32x8d file and conventions. Its ResNet twin
is mask_rcnn_R_101_FPN_3x_dconv_c3-c5.py beside it.
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from resnext_det import ResNeXtSpec, make_resnext

model = get_config("common/models/mask_rcnn_fpn.py").model
dataloader = get_config("common/data/coco.py").dataloader
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
        deform_on_per_stage=[False, True, True, True],
        deform_modulated=False,
        deform_num_groups=1,
    ),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=2,
)
model.pixel_std = [57.375, 57.120, 58.395]
dataloader.evaluator.use_fast_impl = False

train.init_checkpoint = "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"
train.max_iter = 270000

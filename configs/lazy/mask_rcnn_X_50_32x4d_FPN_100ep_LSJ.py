"""Mask R-CNN X-50-32x4d FPN, 100 epochs of large-scale jitter, from scratch: detectron2's
new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py (SyncBN everywhere, 4conv1fc box head, 2-conv
RPN, random resize 0.1-2.0 and 1024x1024 crops, batch 64, AMP) with the ResNeXt backbone.

Its ResNet twin is mask_rcnn_R_50_FPN_100ep_LSJ.py beside it (C = 1, d = 64).
"""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from resnext_det import ResNeXtSpec, make_resnext

_lsj = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model, dataloader, optimizer, lr_multiplier, train = (
    _lsj.model,
    _lsj.dataloader,
    _lsj.optimizer,
    _lsj.lr_multiplier,
    _lsj.train,
)

# From scratch, as the new baselines train: nothing frozen, SyncBN, stride in the 3x3 (the
# ResNeXt paper's placement; no ImageNet file to match).
model.backbone.bottom_up = L(make_resnext)(
    spec=L(ResNeXtSpec)(
        depth=50,
        cardinality=32,
        width_per_group=4,
        norm="SyncBN",
        stride_in_1x1=False,
    ),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=0,
)
dataloader.evaluator.use_fast_impl = False

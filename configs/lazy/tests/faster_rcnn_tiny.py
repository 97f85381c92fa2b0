"""The LazyConfig twin of configs/tests/faster_rcnn_tiny.yaml: a tiny ResNeXt-FPN Faster R-CNN for
CPU tests of the training machinery (seeded, deterministic, no loader workers, no aspect-ratio
buckets, so that a killed and resumed run can be compared with an uninterrupted one). Datasets:
the generated set, registered by the test as synthetic_train / synthetic_val."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ..faster_rcnn_fpn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.spec.update(
    depth=26,
    cardinality=2,
    width_per_group=4,
    stem_out_channels=8,
    res2_out_channels=16,
    norm="BN",  # from scratch: FrozenBN (the identity) lets the tiny net diverge
)
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 16
model.proposal_generator.head.in_channels = 16
model.proposal_generator.pre_nms_topk = (256, 256)
model.proposal_generator.post_nms_topk = (64, 64)
model.roi_heads.num_classes = 4
model.roi_heads.batch_size_per_image = 32
model.roi_heads.box_head.input_shape = ShapeSpec(channels=16, height=7, width=7)
model.roi_heads.box_head.fc_dims = [32, 32]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=32)

dataloader.train.dataset.names = "synthetic_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(64,), sample_style="choice", max_size=96),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.train.aspect_ratio_grouping = False
dataloader.test.dataset.names = "synthetic_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=96)]
dataloader.test.num_workers = 0

optimizer.lr = 0.01
lr_multiplier.scheduler.milestones = [5, 8]
lr_multiplier.scheduler.values = [1.0, 0.1]
lr_multiplier.warmup_length = 2 / 8

train.init_checkpoint = ""
train.max_iter = 8
train.checkpointer.period = 2
train.eval_period = 0
train.device = "cpu"
train.seed = 7
train.deterministic = True

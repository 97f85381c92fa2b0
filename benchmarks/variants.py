"""The variants the benchmark times: one model per setting, built from the same weights.

:func:`bench_config` is detectron2's Base-RCNN-FPN config for a named model; the baseline is
built from it by detectron2, every other setting loads the baseline's weights, so outputs can be
compared element by element.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from resnext_det.roi_align import channels_last_roi_align
from resnext_det.speed import (
    autocast,
    compile_module,
    onednn_1x1_convolutions,
    optimize_for_inference,
    to_channels_last,
)

from .measure import count_gmacs
from .settings import BENCH_MODELS, TORCHVISION_MODELS, BenchmarkInputError, Setting

__all__ = [
    "Variant",
    "realistic_norms",
    "bench_config",
    "backbone_variant",
    "detector_inputs",
    "detector_variant",
    "build_variants",
]


def realistic_norms(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms (fixed by ``seed``), as a
    trained network has: with detectron2's identity-initialised FrozenBN, folding and fp32/AMP
    comparisons would pass trivially."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) and m.running_mean is not None:
            n = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def bench_config(model_name: str, device: torch.device, task: str, threads: int | None = None):
    """detectron2's own Base-RCNN-FPN config for ``model_name``, with the ResNeXt conventions;
    ``CPU_TRAINING.NUM_THREADS`` is ``threads`` (default: this process's thread count), the
    count a trainer of the benchmark's process would be configured with."""
    from detectron2 import model_zoo

    from resnext_det.config import load_config

    if model_name not in BENCH_MODELS:
        raise BenchmarkInputError(
            "models", f"unknown model {model_name!r}; known: {list(BENCH_MODELS)}"
        )
    cfg = load_config(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP = BENCH_MODELS[model_name]
    # Stride in the 3x3 (Caffe2/torchvision ResNeXt convention) for every model, so that one set
    # of weights serves detectron2's, the project's and torchvision's network alike.
    r.STRIDE_IN_1X1 = False
    cfg.MODEL.DEVICE = str(device)
    if task in ("forward", "backward"):
        cfg.MODEL.BACKBONE.FREEZE_AT = 0  # backward through the whole backbone
    cfg.CPU_TRAINING.NUM_THREADS = torch.get_num_threads() if threads is None else threads
    return cfg


@dataclass
class Variant:
    setting: Setting
    model: nn.Module
    step: Callable[[], object]  # one timed iteration
    check: Callable[[], object]  # outputs compared with the baseline's (fp32 where it can)


def backbone_variant(
    setting: Setting, task: str, reference: nn.Module, cfg, x: torch.Tensor
) -> Variant:
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from resnext_det.backbone import build_resnext_backbone

    device = x.device
    state = reference.state_dict()
    if setting.source == "detectron2":
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        model.load_state_dict(state)
    elif setting.source == "torchvision":
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor
        from torchvision.ops import FrozenBatchNorm2d as TVFrozenBN

        from resnext_det.weights.torchvision import detectron2_to_torchvision

        name = next(
            k
            for k, v in BENCH_MODELS.items()
            if v
            == (
                cfg.MODEL.RESNETS.DEPTH,
                cfg.MODEL.RESNETS.NUM_GROUPS,
                cfg.MODEL.RESNETS.WIDTH_PER_GROUP,
            )
        )
        net = getattr(torchvision.models, TORCHVISION_MODELS[name])(norm_layer=TVFrozenBN)
        missing, unexpected = net.load_state_dict(detectron2_to_torchvision(state), strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise RuntimeError(f"torchvision {name}: weights do not match: {missing} {unexpected}")
        nodes = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}
        model = create_feature_extractor(net, return_nodes=nodes)
    else:
        cfg = cfg.clone()
        cfg.MODEL.RESNEXT.BLOCK_FORM = setting.block_form
        cfg.MODEL.RESNEXT.CHANNELS_LAST = setting.channels_last
        model = build_resnext_backbone(cfg, ShapeSpec(channels=3))
        model.load_state_dict(state)
    model.to(device)
    if setting.channels_last:
        to_channels_last(model)
    amp = setting.amp_dtype(device)
    if task == "forward":
        model.eval()
        if setting.optimize:
            optimize_for_inference(model, onednn_1x1=setting.onednn_1x1)
    else:
        model.train()
    if setting.compile:
        compile_module(model, **setting.compile_kwargs())

    def forward():
        with torch.inference_mode(), autocast(device, amp):
            return model(x)

    def backward():
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = model(x)
        sum(v.float().sum() for v in out.values()).backward()

    def input_gradient():
        xg = x.clone().requires_grad_(True)
        with autocast(device, amp):
            out = model(xg)
        sum(v.float().sum() for v in out.values()).backward()
        model.zero_grad(set_to_none=True)
        return xg.grad

    if task == "forward":
        return Variant(setting, model, forward, lambda: _float(forward()))
    return Variant(setting, model, backward, input_gradient)


def _float(outputs):
    if isinstance(outputs, dict):
        return {k: v.float() for k, v in outputs.items()}
    return outputs.float()


def detector_inputs(n: int, size: tuple[int, int], device: torch.device, seed: int) -> list:
    """``n`` synthetic images (uint8 values, as detectron2's mapper gives them), 5 boxes each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    inputs = []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (torch.rand(5, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1).to(device))
        inst.gt_classes = torch.randint(0, 80, (5,), generator=g).to(device)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        inputs.append({"image": image.to(device), "height": h, "width": w, "instances": inst})
    return inputs


def detector_variant(
    setting: Setting, task: str, reference: nn.Module, cfg, inputs: list
) -> Variant:
    import itertools

    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    device = torch.device(cfg.MODEL.DEVICE)
    cfg = cfg.clone()
    if setting.source == "project":
        cfg.MODEL.BACKBONE.NAME = "build_resnext_fpn_backbone"
        cfg.MODEL.RESNEXT.BLOCK_FORM = setting.block_form
        cfg.MODEL.RESNEXT.CHANNELS_LAST = setting.channels_last
    model = build_model(cfg)
    model.load_state_dict(reference.state_dict())
    if setting.channels_last:
        to_channels_last(model)
        if setting.source == "project" and device.type == "cpu":
            # as the project's CPU trainer does with channels_last (speed.apply_cpu_training)
            channels_last_roi_align(model)
    if setting.onednn_1x1:
        onednn_1x1_convolutions(model)
    amp = setting.amp_dtype(device)
    if task == "inference":
        model.eval()
        if setting.optimize:
            optimize_for_inference(model, onednn_1x1=setting.onednn_1x1)
    if setting.compile:
        compile_module(model.backbone, **setting.compile_kwargs())

    def features():
        with torch.inference_mode(), autocast(device, amp):
            return _float(model.backbone(model.preprocess_image(inputs).tensor))

    if task == "inference":

        def infer():
            with torch.inference_mode(), autocast(device, amp):
                return model(inputs)

        return Variant(setting, model, infer, features)

    # lr 0: every iteration does the full update but the weights (and so the work) stay the same.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
    data = itertools.repeat(inputs)
    if setting.source == "detectron2":
        trainer = SimpleTrainer(model, data, optimizer)
    else:
        from resnext_det.training import GuardedTrainer

        trainer = GuardedTrainer(model, data, optimizer, amp=bool(amp), device=str(device))

    def train_step():
        with EventStorage(0):
            trainer.run_step()

    def rpn_losses():
        # The RPN's losses: its anchor sampling depends on the ground truth and the seed only,
        # while the RoI heads sample from proposals, which any rounding difference reorders.
        torch.manual_seed(0)
        with EventStorage(0), autocast(device, amp):
            loss_dict = model(inputs)
        return {k: v.detach().float() for k, v in loss_dict.items() if k.startswith("loss_rpn")}

    return Variant(setting, model, train_step, rpn_losses)


def _checksum(model: torch.nn.Module) -> float:
    """A float64 sum of ``model``'s floating-point parameters and buffers: the same in two
    processes that built the same weights from the same seed."""
    return float(
        sum(v.double().sum() for v in model.state_dict().values() if v.is_floating_point())
    )


def build_variants(
    *,
    model_name: str,
    task: str,
    device: str,
    size: tuple[int, int],
    batch: int,
    seed: int,
    settings: list[Setting],
    count_macs: bool = False,
) -> tuple[list[Variant], float, tuple[float, str] | None]:
    """One variant per setting of ``settings`` (resolved for the case and applying to ``task``:
    the caller's choice), built from one reference network (detectron2's, with realistic norms)
    that only ``seed`` decides, so that another process building the same case gets the same
    weights and inputs.

    Returns the variants, the reference's :func:`_checksum` and, with ``count_macs``, its
    multiply-adds per image (:func:`count_gmacs`).
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    cfg = bench_config(model_name, torch.device("cpu"), task)
    detector = task in ("train", "inference")
    if detector:
        from detectron2.modeling import build_model

        reference = realistic_norms(build_model(cfg), seed)
        inputs = detector_inputs(batch, size, torch.device("cpu"), seed)
    else:
        from detectron2.layers import ShapeSpec
        from detectron2.modeling.backbone.resnet import build_resnet_backbone

        reference = realistic_norms(build_resnet_backbone(cfg, ShapeSpec(channels=3)), seed)
        inputs = None
    checksum = _checksum(reference)
    macs = count_gmacs(task, reference, size, inputs) if count_macs else None
    cfg.MODEL.DEVICE = str(dev)
    reference.to(dev)
    if detector:
        inputs = detector_inputs(batch, size, dev, seed)
    else:
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
        x = x.to(dev)
    if detector:
        variants = [detector_variant(s, task, reference, cfg, inputs) for s in settings]
    else:
        variants = [backbone_variant(s, task, reference, cfg, x) for s in settings]
    return variants, checksum, macs

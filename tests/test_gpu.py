"""On CUDA: training steps (fp32, AMP, channels_last), CPU equality, launcher kill-and-resume,
inference, ``optimize_for_inference``, export of a CUDA-trained checkpoint, the benchmark.

``pytest -m gpu`` runs only these; without CUDA each is skipped with the reason (they are never
deselected, so a normal run lists them as skipped). ``tools/gpu_check.sh`` runs them on a lent GPU
machine. The detector is the real one: detectron2's Faster R-CNN FPN with this project's
X-50-32x4d at full width (``configs/faster_rcnn_X_50_32x4d_FPN_1x.yaml``), random weights and
non-trivial norm statistics (an identity FrozenBN would make equality tests easy to pass).

Tolerances (stated here, none measured on a GPU yet; tools/gpu_check.sh prints what was met):

* fp32 on CUDA against the CPU, with TF32 off (TF32 convolutions keep 10 mantissa bits, by design
  not fp32): each loss term within ``LOSS_RTOL`` relative; backbone features, per-proposal class
  scores and boxes within ``FP32_TOL`` (max |diff| / max |reference|, as ``max_relative_error``).
* bf16 / fp16 autocast against fp32: ``BF16_TOL`` / ``FP16_TOL`` (the CPU measured 0.8-1.1e-2 and
  1.3e-3 on the same network: tests/test_speed.py).
* a killed and resumed GPU run against an uninterrupted one: ``RESUME_ATOL`` on every weight
  (ROIAlign's backward adds with atomics on CUDA, so runs are not bit-identical there).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, randomize_norm_stats
from torch import nn

from resnext_det.config import load_config
from resnext_det.speed import autocast, max_relative_error, optimize_for_inference, to_channels_last

CUDA = torch.cuda.is_available()
NO_CUDA = (
    f"needs CUDA: torch {torch.__version__} sees no GPU here (torch.cuda.is_available() is False)"
)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason=NO_CUDA)]

X50 = REPO / "configs" / "faster_rcnn_X_50_32x4d_FPN_1x.yaml"
TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"
# The benchmark json tools/gpu_check.sh wrote; without it the test runs a short benchmark itself.
BENCHMARK_ENV = "RESNEXT_DET_GPU_BENCHMARK"

LOSS_RTOL = 1e-3
FP32_TOL = 1e-4
BOX_ATOL = 1e-2  # pixels
BF16_TOL = 5e-2
FP16_TOL = 1e-2
RESUME_ATOL = 1e-4


@pytest.fixture
def true_fp32():
    """fp32 convolutions and matmuls on CUDA (torch's default lets cuDNN use TF32)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _x50(device: str = "cuda", *, channels_last: bool = False, seed: int = 0) -> nn.Module:
    """The X-50-32x4d-FPN Faster R-CNN, built on the CPU (the same weights for every device)."""
    from detectron2.modeling import build_model

    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    opts += ["MODEL.RESNEXT.CHANNELS_LAST", str(channels_last)]
    cfg = load_config(X50, opts)
    torch.manual_seed(seed)
    model = randomize_norm_stats(build_model(cfg), seed=seed + 1).to(device)
    return to_channels_last(model) if channels_last else model


def _batch(n: int = 2, size: tuple[int, int] = (384, 512), seed: int = 0) -> list[dict]:
    """``n`` images (0-255 values, as detectron2's mapper gives them) with 4 boxes each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(4, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 80, (4,), generator=g)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        batch.append({"image": image, "height": h, "width": w, "instances": inst})
    return batch


# ----------------------------------------------------------------------------- training steps


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("trainer", ["fp32", "amp", "detectron2-AMPTrainer"])
def test_x50_training_steps_on_cuda(trainer, channels_last):
    """Six steps of the project's trainer step (fp32, and AMP: float16 autocast + GradScaler) and
    of detectron2's own AMPTrainer: every loss finite, the weights finite and moved."""
    from detectron2.engine import AMPTrainer
    from detectron2.utils.events import EventStorage

    from resnext_det.training import GuardedTrainer

    model = _x50(channels_last=channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    data = itertools.repeat(_batch())
    if trainer == "detectron2-AMPTrainer":
        step = AMPTrainer(model, data, optimizer, grad_scaler=torch.amp.GradScaler("cuda"))
    else:
        step = GuardedTrainer(model, data, optimizer, amp=trainer == "amp", device="cuda")
        assert (step.grad_scaler is not None) is (trainer == "amp")
    with EventStorage(0) as storage:
        for i in range(6):
            step.iter = storage.iter = i
            step.run_step()
    total = [v for v, _ in storage.history("total_loss").values()]
    terms = {k for k in storage.histories() if k.startswith("loss_")}
    assert len(total) == 6 and all(math.isfinite(v) and v > 0 for v in total), total
    assert terms == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(math.isfinite(v) for k in terms for v, _ in storage.history(k).values())
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before)), "no step was taken"
    if trainer != "fp32":
        assert 0 < step.grad_scaler.get_scale() < float("inf")
    if channels_last:
        conv = model.backbone.bottom_up.res3[0].conv2.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)


def _on_cpu_sampler(monkeypatch) -> None:
    """detectron2 draws its anchor and RoI samples with ``torch.randperm`` on the labels' device,
    and CUDA's generator is not the CPU's: draw them on the CPU for both, so that both devices
    train on the same samples."""
    from detectron2.modeling import sampling
    from detectron2.modeling.proposal_generator import rpn
    from detectron2.modeling.roi_heads import roi_heads

    def on_cpu(labels, num_samples, positive_fraction, bg_label):
        pos, neg = sampling.subsample_labels(labels.cpu(), num_samples, positive_fraction, bg_label)
        return pos.to(labels.device), neg.to(labels.device)

    monkeypatch.setattr(rpn, "subsample_labels", on_cpu)
    monkeypatch.setattr(roi_heads, "subsample_labels", on_cpu)


def _losses(model: nn.Module, batch: list[dict], proposals=None):
    """The four training losses, with the RoI heads on ``proposals`` (default: the model's own).

    The RPN keeps its top proposals by score; two devices' rounding can swap near-equal ones at the
    cut, so the RoI heads of both get the same (the CPU's) proposals. Returns (losses, proposals).
    """
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    images = model.preprocess_image(batch)
    gt = [x["instances"].to(model.device) for x in batch]
    with EventStorage(0):
        features = model.backbone(images.tensor)
        own, rpn_losses = model.proposal_generator(images, features, gt)
        proposals = [p.to("cpu") for p in own] if proposals is None else proposals
        on_device = [p.to(model.device) for p in proposals]
        _, roi_losses = model.roi_heads(images, features, on_device, gt)
    return {k: float(v) for k, v in {**rpn_losses, **roi_losses}.items()}, proposals


def test_fp32_cuda_losses_equal_cpu_losses(true_fp32, monkeypatch):
    _on_cpu_sampler(monkeypatch)
    cpu = _x50("cpu").train()
    cuda = copy.deepcopy(cpu).to("cuda")
    batch = _batch(size=(320, 416))
    expected, proposals = _losses(cpu, batch)
    got, _ = _losses(cuda, batch, proposals)
    assert sorted(got) == ["loss_box_reg", "loss_cls", "loss_rpn_cls", "loss_rpn_loc"]
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=LOSS_RTOL), (k, got, expected)


# ----------------------------------------------------------------------------- the launcher

_DRIVER = """
import socket, sys
import torch, torch.distributed as dist
sys.path.insert(0, {tools!r})
import train_net
from detectron2.engine.launch import _distributed_worker


def main(args):
    # detectron2's worker made an NCCL process group and bound the GPU.
    assert dist.get_backend() == "nccl", dist.get_backend()
    t = torch.ones(1, device="cuda")
    dist.all_reduce(t)
    assert t.item() == 1.0
    print("NCCL process group on", torch.cuda.get_device_name(), flush=True)
    return train_net.main(args)


args = train_net.argument_parser().parse_args(sys.argv[1:])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
# What detectron2's launch() runs in each process it spawns; launch() itself calls main
# directly when there is one process, without a process group.
_distributed_worker(0, main, 1, 1, 0, f"tcp://127.0.0.1:{{port}}", (args,))
"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def _launch(driver: Path, ds, out: Path, *, resume: bool, pause: str | None = None):
    from resnext_det.io import PAUSE_ENV  # main's one atomic writer (training.checkpoint before)

    cmd = [
        sys.executable, str(driver), *(["--resume"] if resume else []),
        "--config-file", str(TINY),
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "OUTPUT_DIR", str(out), "DATASETS.TEST", "()", "MODEL.DEVICE", "cuda",
        "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", PAUSE_ENV)}
    if pause:
        env[PAUSE_ENV] = pause
    # The output goes to a file: a pipe nobody reads while the run goes on could fill and stall it.
    console = out.with_name(f"{out.name}.{'resumed' if resume else 'run'}.txt")
    with open(console, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    proc.console = console
    return proc


def _finish(proc: subprocess.Popen) -> str:
    proc.wait(timeout=240)
    text = proc.console.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def _final(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_launcher_nccl_kill_and_resume_on_one_gpu(tmp_path, synthetic):
    """tools/train_net.py's main in detectron2's launcher worker (NCCL process group, the GPU
    bound): SIGKILLed inside the write of model_0000003.pth, resumed with --resume, it ends
    within RESUME_ATOL of an uninterrupted run."""
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(tools=str(REPO / "tools")))
    reference = tmp_path / "reference"
    log = _finish(_launch(driver, synthetic, reference, resume=False))
    assert "NCCL process group on" in log

    out = tmp_path / "killed"
    proc = _launch(driver, synthetic, out, resume=False, pause="60:model_0000003.pth")
    deadline = time.monotonic() + 180
    while not (
        out.is_dir() and any(p.startswith(".model_0000003.pth.tmp-") for p in os.listdir(out))
    ):
        assert proc.poll() is None, f"it ended before the kill point:\n{proc.console.read_text()}"
        assert time.monotonic() < deadline, "the kill point was not reached in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    _finish(_launch(driver, synthetic, out, resume=True))
    assert "Starting training from iteration 2" in (out / "log.txt").read_text()
    diff = _max_diff(_final(out), _final(reference))
    if diff > RESUME_ATOL:  # tell rounding from a broken resume: two uninterrupted runs
        again = tmp_path / "again"
        _finish(_launch(driver, synthetic, again, resume=False))
        floor = _max_diff(_final(again), _final(reference))
        pytest.fail(
            f"the resumed run ends {diff:.3g} from the uninterrupted one (tolerance "
            f"{RESUME_ATOL:g}); two uninterrupted runs differ by {floor:.3g}"
        )


# ----------------------------------------------------------------------------- inference


def _per_proposal(model: nn.Module, images, features, proposals):
    """Class scores and class-specific boxes of the RoI heads for fixed ``proposals``: the
    detector's outputs before score threshold and NMS (which pick among near-equal scores, so
    they are compared on the numbers they choose from)."""
    heads = model.roi_heads
    proposals = [p.to(model.device) for p in proposals]
    x = heads.box_pooler(
        [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
    )
    predictions = heads.box_predictor(heads.box_head(x))
    scores = heads.box_predictor.predict_probs(predictions, proposals)
    boxes = heads.box_predictor.predict_boxes(predictions, proposals)
    return [s.float().cpu() for s in scores], [b.float().cpu() for b in boxes]


def test_inference_on_cuda_equals_cpu(true_fp32):
    cpu = _x50("cpu").eval()
    cuda = copy.deepcopy(cpu).to("cuda").eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(size=(320, 416))]
    with torch.no_grad():
        images_cpu = cpu.preprocess_image(batch)
        images_cuda = cuda.preprocess_image(batch)
        f_cpu, f_cuda = cpu.backbone(images_cpu.tensor), cuda.backbone(images_cuda.tensor)
        assert max_relative_error({k: v.cpu() for k, v in f_cuda.items()}, f_cpu) <= FP32_TOL
        proposals, _ = cpu.proposal_generator(images_cpu, f_cpu)
        s_cpu, b_cpu = _per_proposal(cpu, images_cpu, f_cpu, proposals)
        s_cuda, b_cuda = _per_proposal(cuda, images_cuda, f_cuda, proposals)
        for sc, sg, bc, bg in zip(s_cpu, s_cuda, b_cpu, b_cuda):
            assert sc.shape == sg.shape and sc.shape[0] > 100
            assert max_relative_error(sg, sc) <= FP32_TOL
            assert (bg - bc).abs().max().item() <= BOX_ATOL
        # And end to end on CUDA: detections with finite boxes and scores in [0, 1] (no score
        # threshold: random heads score every class near 1/81).
        cuda.roi_heads.box_predictor.test_score_thresh = 0.0
        detections = cuda(batch)
    for d in detections:
        inst = d["instances"]
        assert len(inst) > 0 and torch.isfinite(inst.pred_boxes.tensor).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()


def test_optimize_for_inference_on_cuda(true_fp32):
    """BN folding + channels_last on CUDA keeps fp32 outputs; bf16 and fp16 stay within their
    tolerances of them (and differ: the autocast is real)."""
    model = _x50("cuda").eval()
    optimized = optimize_for_inference(copy.deepcopy(model))
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(size=(320, 416))]
    with torch.no_grad():
        x = model.preprocess_image(batch).tensor
        expected = model.backbone(x)
        assert max_relative_error(optimized.backbone(x), expected) <= FP32_TOL
        for dtype, tol in (("bfloat16", BF16_TOL), ("float16", FP16_TOL)):
            with autocast("cuda", dtype):
                got = optimized.backbone(x)
                detections = optimized(batch)
            assert got["p2"].dtype == getattr(torch, dtype)
            err = max_relative_error({k: v.float() for k, v in got.items()}, expected)
            assert 0 < err <= tol, (dtype, err)
            assert all(torch.isfinite(d["instances"].scores).all() for d in detections)


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def cuda_trained(tmp_path_factory):
    """(cfg, checkpoint, detector on the CPU): X-50-32x4d-FPN trained 3 steps on CUDA and saved
    by detectron2's checkpointer from the GPU (its tensors are CUDA tensors in the file)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.events import EventStorage

    from resnext_det.training import GuardedTrainer

    model = _x50("cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    step = GuardedTrainer(
        model, itertools.repeat(_batch()), torch.optim.SGD(params, lr=1e-3), device="cuda"
    )
    with EventStorage(0) as storage:
        for i in range(3):
            step.iter = storage.iter = i
            step.run_step()
    folder = tmp_path_factory.mktemp("cuda_trained")
    DetectionCheckpointer(model, str(folder)).save("model_final", iteration=3)
    raw = torch.load(folder / "model_final.pth", weights_only=True, map_location=None)
    assert next(iter(raw["model"].values())).is_cuda
    cfg = load_config(X50, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    return cfg, folder / "model_final.pth", model.cpu().eval()


def _tv_features(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    for name, layer in zip(
        ("res2", "res3", "res4", "res5"), (net.layer1, net.layer2, net.layer3, net.layer4)
    ):
        x = out[name] = layer(x)
    return out


@pytest.mark.parametrize(
    "format, suffix", [("torchvision", ".pth"), ("timm", ".safetensors"), ("detectron2", ".pth"),
                       ("detectron2", ".safetensors"), ("torchscript", ".ts"), ("onnx", ".onnx")],
)  # fmt: skip
def test_export_of_a_cuda_trained_checkpoint(cuda_trained, tmp_path, format, suffix):
    """Every format, read back by code this project did not write, gives the trained detector's
    (CPU) features, as tests/test_export.py checks for CPU checkpoints."""
    import torchvision
    from detectron2.modeling import build_model
    from safetensors.torch import load_file

    from resnext_det.export import export_backbone

    cfg, ckpt, model = cuda_trained
    fpn = format in ("detectron2", "torchscript", "onnx")
    out = tmp_path / f"x50{suffix}"
    result = export_backbone(cfg, ckpt, format, out, fpn=fpn, fold_bn=format == "onnx")
    assert result.metadata["source"]["iteration"] == 3
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(3)) * 50
    with torch.no_grad():
        expected = model.backbone(x) if fpn else model.backbone.bottom_up(x)
        state = load_file(str(out)) if suffix == ".safetensors" else None
        if format == "torchvision":
            net = torchvision.models.resnext50_32x4d().eval()
            missing, unexpected = net.load_state_dict(torch.load(out, weights_only=True), False)
            assert (sorted(missing), unexpected) == (["fc.bias", "fc.weight"], [])
            got = _tv_features(net, x)
        elif format == "timm":
            timm = pytest.importorskip("timm")
            net = timm.create_model("resnext50_32x4d", pretrained=False, num_classes=0).eval()
            net.load_state_dict(state, strict=True)  # fc: Identity
            feats = net.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
            got = dict(zip(("res2", "res3", "res4", "res5"), feats))
        elif format == "detectron2":
            state = state if state is not None else torch.load(out, weights_only=True)["model"]
            fresh = build_model(cfg).eval()
            missing, unexpected = fresh.load_state_dict(state, strict=False)
            assert unexpected == [] and not [k for k in missing if k.startswith("backbone.")]
            got = fresh.backbone(x)
        elif format == "torchscript":
            got = dict(zip(result.metadata["outputs"], torch.jit.load(str(out))(x)))
        else:
            ort = pytest.importorskip("onnxruntime")
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            outputs = session.run(None, {"images": x.numpy()})
            got = dict(zip(result.metadata["outputs"], map(torch.from_numpy, outputs)))
    assert sorted(got) == sorted(expected)
    assert max_relative_error(got, expected) <= FP32_TOL


# ----------------------------------------------------------------------------- deformable stages


@pytest.mark.parametrize("modulated,groups", [(False, 1), (True, 4)], ids=["dcnv1", "dcnv2-g4"])
def test_deformable_block_on_cuda_equals_cpu(true_fp32, modulated, groups):
    """X-101-32x8d's res3.0 as a deformable block (resnext_det.deform, torchvision's CUDA
    kernel): fp32 forward and the gradients of input and every parameter (offset conv included)
    equal the CPU's within FP32_TOL; under fp16 autocast the step is finite within FP16_TOL of
    fp32 and still reaches the offsets."""
    from resnext_det.deform import DeformBottleneckBlock

    torch.manual_seed(0)
    block = DeformBottleneckBlock(256, 512, bottleneck_channels=512, stride=2, num_groups=32,
                                  norm="FrozenBN", deform_modulated=modulated,
                                  deform_num_groups=groups)  # fmt: skip
    randomize_norm_stats(block, 1)
    with torch.no_grad():
        block.conv2_offset.weight.normal_(0, 0.05)
    x = torch.randn(2, 256, 40, 48)
    results = {}
    for device in ("cpu", "cuda"):
        b = copy.deepcopy(block).to(device)
        xi = x.to(device).requires_grad_(True)
        out = b(xi)
        out.square().mean().backward()
        grads = {"input": xi.grad, **{k: p.grad for k, p in b.named_parameters()}}
        results[device] = (out.detach().cpu(), {k: g.cpu() for k, g in grads.items()})
    assert max_relative_error(results["cuda"][0], results["cpu"][0]) <= FP32_TOL
    for k, g in results["cpu"][1].items():
        assert max_relative_error(results["cuda"][1][k], g) <= FP32_TOL, k
    b = copy.deepcopy(block).cuda()
    xi = x.cuda().requires_grad_(True)
    with autocast("cuda", "float16"):
        out = b(xi)
    out.float().square().mean().backward()
    assert torch.isfinite(b.conv2_offset.weight.grad).all()
    assert b.conv2_offset.weight.grad.abs().max() > 0
    assert max_relative_error(out.float().cpu(), results["cpu"][0]) <= FP16_TOL


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_records_x101_training_memory_and_time():
    """The benchmark's record of an X-101-32x8d-FPN training iteration (2 images, 800x1333):
    peak GPU memory from CUDA's allocator, at least the gradients' size, and finite times."""
    from detectron2.modeling import build_model

    from benchmarks import BENCH_MODELS, run_benchmark

    path = os.environ.get(BENCHMARK_ENV)
    if path:
        report = json.loads(Path(path).read_text())
    else:
        report = run_benchmark(
            models=["X-101-32x8d"],
            tasks=["train"],
            settings=["detectron2", "channels_last+amp"],
            device="cuda",
            size=(800, 1333),
            batch=2,
            repeats=2,
            progress=False,
        )
    c = report["config"]
    assert c["device"].startswith("cuda") and c["size"] == [800, 1333] and c["batch"] == 2
    assert report["machine"].get("gpu")
    rows = [r for r in report["results"] if r["model"] == "X-101-32x8d" and r["task"] == "train"]
    assert {r["setting"] for r in rows} >= {"detectron2"}, [r["setting"] for r in rows]

    cfg = load_config(REPO / "configs" / "Base-RCNN-FPN.yaml", ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP = BENCH_MODELS["X-101-32x8d"]
    grads_mib = 4 * sum(p.numel() for p in build_model(cfg).parameters() if p.requires_grad)
    grads_mib /= 2**20
    for row in rows:
        assert row["memory_measure"] == "cuda_max_allocated"
        assert row["peak_memory_mib"] >= grads_mib, (row["setting"], row["peak_memory_mib"])
        assert all(t > 0 and math.isfinite(t) for t in row["times_s"]) and row["median_s"] > 0
        assert math.isfinite(row["max_rel_err_vs_baseline"])

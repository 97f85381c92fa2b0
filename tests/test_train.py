"""Training: the configs, tools/train_net.py (train, --resume, --eval-only), the loss guard, failing
checkpoint writes, CPU AMP and the resumable data order.

The configs are checked against detectron2's own model-zoo files and torchvision's weight records;
the sampler against detectron2's TrainingSampler.
"""

from __future__ import annotations

import errno
import glob
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, flat
from detectron2 import model_zoo
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler

import resnext_det
from resnext_det import ResNeXtSpec
from resnext_det.commands.train import argument_parser
from resnext_det.training import (
    CheckpointWriteError,
    NonFiniteLossError,
    ResumableSampler,
    Trainer,
    TrainingCheckpointer,
    evaluate,
    setup,
)
from resnext_det.weights.hub import MIRROR_ENV, resolve_name

CONFIGS = REPO / "configs"
TINY = CONFIGS / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"

# name -> (torchvision builder, the model-zoo config with the same schedule)
IMAGENET_CONFIGS = {
    "faster_rcnn_R_50_FPN_1x": ("resnet50", "faster_rcnn_R_50_FPN_1x"),
    "faster_rcnn_R_50_FPN_3x": ("resnet50", "faster_rcnn_R_50_FPN_3x"),
    "faster_rcnn_X_50_32x4d_FPN_1x": ("resnext50_32x4d", "faster_rcnn_R_50_FPN_1x"),
    "faster_rcnn_X_50_32x4d_FPN_3x": ("resnext50_32x4d", "faster_rcnn_R_50_FPN_3x"),
    "faster_rcnn_R_101_FPN_3x": ("resnet101", "faster_rcnn_R_101_FPN_3x"),
    "faster_rcnn_X_101_32x8d_FPN_3x": ("resnext101_32x8d", "faster_rcnn_X_101_32x8d_FPN_3x"),
    "faster_rcnn_X_101_64x4d_FPN_3x": ("resnext101_64x4d", "faster_rcnn_R_101_FPN_3x"),
}


def load_cfg(path: Path | str):
    return resnext_det.load_config(path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def register_args(ds) -> list[str]:
    return [
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "--register", "synthetic_val", str(ds.val_json), str(ds.val_image_root),
    ]  # fmt: skip


def run_train_net(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    # One thread: on a busy 2-core machine two OpenMP threads per process are ~10x slower.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(TRAIN_NET), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, **kwargs,
    )  # fmt: skip
    assert proc.returncode == 0, f"train_net.py {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
    return proc


def tiny_setup(ds, out_dir: Path, *opts: str, resume: bool = False):
    """setup() of tools/train_net.py, in this process."""
    argv = ["--config-file", str(TINY), *register_args(ds)]
    argv += ["--resume"] if resume else []
    argv += ["OUTPUT_DIR", str(out_dir), "DATASETS.TEST", "()", *opts]
    return setup(argument_parser().parse_args(argv))


# ---------------------------------------------------------------------------------------------
# Configs


def all_configs() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


@pytest.mark.parametrize("path", all_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads_and_describes_a_valid_backbone(path):
    cfg = load_cfg(path)
    # RetinaNet's FPN is P3-P7 (resnext_det/backbone.py); every other config uses P2-P6.
    builder, arch = cfg.MODEL.BACKBONE.NAME, cfg.MODEL.META_ARCHITECTURE
    assert builder == (
        "build_resnext_retinanet_fpn_backbone"
        if arch == "RetinaNet"
        else "build_resnext_fpn_backbone"
    )
    ResNeXtSpec.from_config(cfg)  # raises on a bad architecture


@pytest.mark.parametrize("name", sorted(IMAGENET_CONFIGS))
def test_imagenet_configs_are_the_model_zoo_schedule_with_torchvision_weights(name):
    """Against detectron2's own model-zoo yaml: only the backbone and its input conventions may
    differ; the weight file is torchvision's published V1 file of the same architecture."""
    import torchvision

    builder, zoo_name = IMAGENET_CONFIGS[name]
    ours = load_cfg(CONFIGS / f"{name}.yaml")
    zoo = load_cfg(model_zoo.get_config_file(f"COCO-Detection/{zoo_name}.yaml"))
    allowed = {
        "MODEL.WEIGHTS", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT",
        "MODEL.BACKBONE.NAME", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.DEPTH",
        "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP",
    }  # fmt: skip
    a, b = flat(ours), flat(zoo)
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= allowed, {k: (a[k], b[k]) for k in differ - allowed}
    assert ours.SOLVER.IMS_PER_BATCH == 16 and ours.SOLVER.BASE_LR == 0.02
    assert ours.DATASETS.TRAIN == ("coco_2017_train",) and ours.DATASETS.TEST == ("coco_2017_val",)
    assert len(ours.INPUT.MIN_SIZE_TRAIN) > 1  # multi-scale training, as the model zoo's

    # The architecture is the one in the file name, and the weights are torchvision's for it.
    spec = ResNeXtSpec.from_config(ours)
    assert spec.name == name.split("faster_rcnn_")[1].split("_FPN")[0].replace("_", "-")
    weights = torchvision.models.get_model_weights(builder).IMAGENET1K_V1
    assert resolve_name(ours.MODEL.WEIGHTS).url == weights.url  # torchvision://NAME.IMAGENET1K_V1
    preprocess = weights.transforms()
    assert ours.INPUT.FORMAT == "RGB"
    assert pytest.approx([255 * m for m in preprocess.mean]) == ours.MODEL.PIXEL_MEAN
    assert pytest.approx([255 * s for s in preprocess.std]) == ours.MODEL.PIXEL_STD
    # torchvision strides in the 3x3 conv of a block: STRIDE_IN_1X1 False.
    net = getattr(torchvision.models, builder)()
    assert net.layer2[0].conv1.stride == (1, 1) and net.layer2[0].conv2.stride == (2, 2)
    assert ours.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert net.layer1[0].conv2.groups == spec.cardinality
    assert net.layer1[0].conv2.out_channels == spec.bottleneck_channels


@pytest.mark.parametrize(
    "pair",
    [
        ("demo/faster_rcnn_R_demo.yaml", "demo/faster_rcnn_X_demo.yaml"),
        (
            "raccoon/faster_rcnn_R_50_FPN_raccoon.yaml",
            "raccoon/faster_rcnn_X_50_32x4d_FPN_raccoon.yaml",
        ),
        ("faster_rcnn_R_50_FPN_1x.yaml", "faster_rcnn_X_50_32x4d_FPN_1x.yaml"),
        ("faster_rcnn_R_50_FPN_3x.yaml", "faster_rcnn_X_50_32x4d_FPN_3x.yaml"),
        ("faster_rcnn_R_101_FPN_3x.yaml", "faster_rcnn_X_101_32x8d_FPN_3x.yaml"),
    ],
)  # fmt: skip
def test_compared_configs_differ_only_in_the_backbone(pair):
    a, b = (flat(load_cfg(CONFIGS / p)) for p in pair)
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= {
        "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.WEIGHTS", "OUTPUT_DIR"
    }, differ  # fmt: skip


def test_demo_pair_has_equal_complexity_and_trains_from_scratch():
    from resnext_det.complexity import backbone_complexity

    r, x = (load_cfg(CONFIGS / "demo" / f"faster_rcnn_{n}_demo.yaml") for n in "RX")
    assert x.MODEL.RESNETS.WIDTH_PER_GROUP == 0  # the template width, resolved by the spec
    rs, xs = ResNeXtSpec.from_config(r), ResNeXtSpec.from_config(x)
    assert rs.cardinality == 1 and xs.cardinality > 1
    rc, xc = (backbone_complexity(s, (128, 128)) for s in (rs, xs))
    assert abs(xc.params / rc.params - 1) < 0.03, (rs.name, rc.params, xs.name, xc.params)
    assert abs(xc.flops / rc.flops - 1) < 0.05
    for cfg in (r, x):
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
        assert cfg.MODEL.RESNETS.NORM in ("BN", "GN", "SyncBN")


# ---------------------------------------------------------------------------------------------
# tools/train_net.py: train, --resume, --eval-only


def test_train_resume_and_eval_only(tmp_path, synthetic):
    out = tmp_path / "out"
    common = ["--config-file", str(TINY), *register_args(synthetic)]
    opts = ["OUTPUT_DIR", str(out), "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "2"]

    run_train_net([*common, *opts, "SOLVER.MAX_ITER", "4"])
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert {p.name for p in out.glob("*.pth")} == {
        "model_0000001.pth", "model_0000003.pth", "model_final.pth"
    }  # fmt: skip
    assert glob.glob(str(out / "events.out.tfevents.*")), "no TensorBoard events"
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 3 and "loss_cls" in metrics[-1]
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 3
    # The training data set's class names travel with the weights (issue 27).
    assert ckpt["resnext_det"]["thing_classes"] == list(synthetic.classes)
    # The optimizer (SGD momentum buffers) and the data-order state are in the checkpoint.
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"], "no optimizer state saved"
    state = ckpt["trainer"]["hooks"]["TrainingStateHook"]
    assert state["images_seen"] == 4 * 2 and state["sampler_seed"] == 7

    # --resume with a longer schedule: continues at iteration 4, from the saved state.
    proc = run_train_net(["--resume", *common, *opts, "SOLVER.MAX_ITER", "6"])
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 4" in log
    assert "data stream of seed 7 from image 8" in log
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 5
    assert json.loads((out / "metrics.json").read_text().splitlines()[-1])["iteration"] == 5

    # --eval-only on the result (in this process, to get the returned metrics).
    cfg = setup(
        argument_parser().parse_args(
            ["--eval-only", *common, "OUTPUT_DIR", str(out / "eval"),
             "MODEL.WEIGHTS", str(out / "model_final.pth")]
        )
    )  # fmt: skip
    results = evaluate(cfg)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results["bbox"])
    assert all(v != v or 0 <= v <= 100 for v in results["bbox"].values())  # NaN or a percentage
    assert (out / "eval" / "inference" / "synthetic_val" / "coco_instances_results.json").is_file()

    # The inference switches of MODEL.RESNEXT reach --eval-only, compared on the raw detections
    # (score threshold 0: a 5-iteration model's AP is near 0, whatever the switches): the
    # unoptimised fp32 model gives the optimised one's detections (1e-4), bf16 autocast changes
    # the scores, within a bf16 tolerance (5e-2).
    def detections(name: str, *switches: str) -> dict[int, list[float]]:
        cfg = setup(argument_parser().parse_args(
            ["--eval-only", *common, "OUTPUT_DIR", str(out / name),
             "MODEL.WEIGHTS", str(out / "model_final.pth"),
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *switches]
        ))  # fmt: skip
        evaluate(cfg)
        found = out / name / "inference" / "synthetic_val" / "coco_instances_results.json"
        scores: dict[int, list[float]] = {}
        for d in json.loads(found.read_text()):
            scores.setdefault(d["image_id"], []).append(d["score"])
        return {k: sorted(v, reverse=True) for k, v in scores.items()}

    optimised = detections("optimised")
    assert optimised and sum(map(len, optimised.values())) > 10
    plain = detections("plain", "MODEL.RESNEXT.OPTIMIZE_FOR_INFERENCE", "False")
    assert plain.keys() == optimised.keys()
    for image, scores in optimised.items():
        assert plain[image] == pytest.approx(scores, abs=1e-4), image
    bf16 = detections("bf16", "MODEL.RESNEXT.INFERENCE_AMP_DTYPE", "bfloat16")
    assert bf16.keys() == optimised.keys()
    changed = 0.0
    for image, scores in optimised.items():
        top = min(len(scores), len(bf16[image]), 5)
        assert bf16[image][:top] == pytest.approx(scores[:top], abs=5e-2), image
        changed = max(changed, max(abs(a - b) for a, b in zip(scores[:top], bf16[image][:top])))
    assert changed > 0  # bf16 did run


@pytest.mark.slow
def test_compile_at_eval_only_gives_the_eager_detections(tmp_path, synthetic, monkeypatch):
    """MODEL.RESNEXT.COMPILE True at --eval-only compiles the backbone (inductor: a C compiler and
    about a minute here) and gives the eager model's raw detections."""
    import resnext_det.speed as speed

    cfg = tiny_setup(synthetic, tmp_path / "train")
    TrainingCheckpointer(Trainer.build_model(cfg), str(tmp_path)).save("weights")
    compiled, real = [], speed.compile_module
    monkeypatch.setattr(speed, "compile_module", lambda m, **k: compiled.append(m) or real(m, **k))

    def detections(name: str, *switches: str) -> list[dict]:
        args = ["--eval-only", "--config-file", str(TINY), *register_args(synthetic)]
        args += ["OUTPUT_DIR", str(tmp_path / name), "MODEL.WEIGHTS", str(tmp_path / "weights.pth")]
        evaluate(setup(argument_parser().parse_args([*args, *switches])))
        found = tmp_path / name / "inference" / "synthetic_val" / "coco_instances_results.json"
        return sorted(json.loads(found.read_text()), key=lambda d: (d["image_id"], -d["score"]))

    eager = detections("eager")
    assert not compiled
    fast = detections("compiled", "MODEL.RESNEXT.COMPILE", "True")
    assert len(compiled) == 1 and compiled[0]._compiled_call_impl is not None
    assert eager and len(fast) == len(eager)
    for a, b in zip(eager, fast):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        assert b["bbox"] == pytest.approx(a["bbox"], abs=1e-2)


def test_missing_weight_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argument_parser().parse_args(
        ["--config-file", str(CONFIGS / "faster_rcnn_X_50_32x4d_FPN_1x.yaml"),
         "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", "resnext50_32x4d-7cdf4587.pth"]
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS 'resnext50_32x4d-7cdf4587.pth'"):
        setup(args)


@pytest.mark.parametrize(
    "key, value, said",
    [
        ("MODEL.RESNEXT.INFERENCE_AMP_DTYPE", "bf16", "INFERENCE_AMP_DTYPE must be one of"),
        ("CPU_TRAINING.NUM_THREADS", "-3", "CPU_TRAINING.NUM_THREADS must be an integer"),
        ("CPU_TRAINING.AMP_DTYPE", "fp16", "CPU_TRAINING.AMP_DTYPE must be one of"),
    ],
)
def test_a_bad_setting_is_refused_before_the_output_folder_is_touched(tmp_path, key, value, said):
    """Values read only later (at --eval-only, in the trainer) are checked with the config: the
    command stops before it locks, logs or saves config.yaml in OUTPUT_DIR."""
    from resnext_det.commands.train import main

    out = tmp_path / "out"
    for extra in ([], ["--eval-only"]):
        argv = ["--config-file", str(TINY), *extra, "--register", "synthetic_train",
                str(tmp_path / "t.json"), str(tmp_path), "DATASETS.TEST", "()",
                "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]  # fmt: skip
        with pytest.raises(ValueError, match=said):
            setup(argument_parser().parse_args([*argv, key, value]))
        assert main([*argv, key, value]) == 2
        assert not out.exists()


@pytest.fixture(scope="module")
def torchvision_x50(tmp_path_factory):
    """A torchvision ResNeXt-50 file named as torchvision names its files (random weights and
    statistics; the hash digits in the name are its own sha256's, as the name resolver checks)."""
    import hashlib

    import torchvision
    from conftest import randomize_norm_stats

    net = randomize_norm_stats(torchvision.models.resnext50_32x4d(), seed=3)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(net.state_dict(), folder / "x50.pth")
    digest = hashlib.sha256((folder / "x50.pth").read_bytes()).hexdigest()
    path = (folder / "x50.pth").rename(folder / f"resnext50_32x4d-{digest[:8]}.pth")
    return net, path


def serve_from_mirror(monkeypatch, path):
    """Make the configs' torchvision://resnext50_32x4d.IMAGENET1K_V1 name this file: torchvision's
    enum entry points at its name, found in a mirror folder (no network)."""
    import torchvision

    entry = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1
    monkeypatch.setattr(entry.value, "url", f"https://download.pytorch.org/models/{path.name}")
    monkeypatch.setenv(MIRROR_ENV, str(path.parent))


def test_imagenet_config_loads_torchvision_weights_through_the_project_loader(
    tmp_path, monkeypatch, torchvision_x50
):
    net, path = torchvision_x50
    serve_from_mirror(monkeypatch, path)  # the config names the weights; run from any folder
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "faster_rcnn_X_50_32x4d_FPN_1x.yaml")
    cfg = setup(argument_parser().parse_args(
        ["--config-file", config, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu"]
    ))  # fmt: skip
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    model = Trainer.build_model(cfg)
    TrainingCheckpointer(model, str(tmp_path)).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    bottom_up = model.backbone.bottom_up
    assert torch.equal(bottom_up.stem.conv1.weight, net.conv1.weight)
    assert torch.equal(bottom_up.res3[0].conv2.weight, net.layer2[0].conv2.weight)
    assert torch.equal(bottom_up.res5[2].conv3.norm.running_var, net.layer4[2].bn3.running_var)
    assert torch.equal(bottom_up.res4[0].shortcut.weight, net.layer3[0].downsample[0].weight)


def test_a_command_line_value_that_contradicts_the_weights_is_an_error(
    tmp_path, monkeypatch, torchvision_x50
):
    _, path = torchvision_x50
    serve_from_mirror(monkeypatch, path)
    config = str(CONFIGS / "faster_rcnn_X_50_32x4d_FPN_1x.yaml")
    args = argument_parser().parse_args(
        ["--config-file", config, "OUTPUT_DIR", str(tmp_path), "INPUT.FORMAT", "BGR"]
    )
    with pytest.raises(ValueError, match=r"INPUT.FORMAT is set to 'BGR', but the weights"):
        setup(args)


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def _inject(trainer, at_call: int, effect):
    model = trainer.model
    forward = model.forward
    calls = itertools.count()

    def patched(batched_inputs):
        n = next(calls)
        if n == at_call:
            return effect(forward, batched_inputs)
        return forward(batched_inputs)

    model.forward = patched


def _nan_cls(forward, batched_inputs):
    losses = forward(batched_inputs)
    losses["loss_cls"] = losses["loss_cls"] * float("nan")
    return losses


def _rpn_blows_up(forward, batched_inputs):
    raise FloatingPointError("Predicted boxes or scores contain Inf/NaN. Training has diverged.")


@pytest.mark.parametrize(
    "effect,match",
    [
        (_nan_cls, r"not finite at iteration 3 \(loss_cls=nan, loss_box_reg=[0-9.]+"),
        (_rpn_blows_up, r"not finite at iteration 3 \(FloatingPointError: Predicted boxes"),
    ],
)
def test_non_finite_loss_stops_with_the_terms_and_keeps_the_last_checkpoint(
    tmp_path, synthetic, effect, match
):
    cfg = tiny_setup(synthetic, tmp_path, "SOLVER.MAX_ITER", "6")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    _inject(trainer, at_call=3, effect=effect)
    with pytest.raises(NonFiniteLossError, match=match) as info:
        trainer.train()
    assert "weights were not updated" in str(info.value)
    assert f"last checkpoint, {tmp_path / 'model_0000001.pth'}, is intact" in str(info.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists()
    assert all(p.isfinite().all() for p in trainer.model.parameters())
    ckpt = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert all(v.isfinite().all() for v in ckpt["model"].values() if v.is_floating_point())


def test_non_finite_parameters_are_never_checkpointed(tmp_path, synthetic):
    """A finite loss can still give an infinite update; that state must not become a checkpoint."""
    cfg = tiny_setup(synthetic, tmp_path, "SOLVER.MAX_ITER", "6")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)

    step, calls = trainer.optimizer.step, itertools.count()

    def step_to_infinity(*args, **kwargs):  # the 4th update (iteration 3) overflows
        step(*args, **kwargs)
        if next(calls) == 3:
            with torch.no_grad():
                trainer.model.roi_heads.box_predictor.cls_score.weight.fill_(float("inf"))

    trainer.optimizer.step = step_to_infinity
    with pytest.raises(NonFiniteLossError, match=r"Parameters are not finite after iteration 3"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists()


# ---------------------------------------------------------------------------------------------
# Failing checkpoint writes


def _checkpointer(tmp_path):
    model = torch.nn.Linear(3, 2)
    return model, TrainingCheckpointer(model, str(tmp_path), save_to_disk=True)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _assert_previous_intact(tmp_path, model_before):
    assert (tmp_path / "last_checkpoint").read_text() == "model_a.pth"
    ckpt = torch.load(tmp_path / "model_a.pth", map_location="cpu", weights_only=True)
    assert torch.equal(ckpt["model"]["weight"], model_before)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p], os.listdir(tmp_path)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_a")
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1)
    if where == "write":

        def half_then_full(obj, f, *a, **k):  # some bytes reach the file, then the disk is full
            f.write(b"\x80\x02partial")
            _enospc()

        monkeypatch.setattr(torch, "save", half_then_full)
    else:
        monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(
        CheckpointWriteError, match=r"Could not write .*model_b\.pth: No space left"
    ) as e:
        ckpt.save("model_b")
    assert e.value.errno == errno.ENOSPC
    assert "the disk is full" in str(e.value) and "model_a.pth" in str(e.value)
    assert not (tmp_path / "model_b.pth").exists()
    monkeypatch.undo()
    _assert_previous_intact(tmp_path, before)


def test_failing_last_checkpoint_write_keeps_the_old_pointer(tmp_path, monkeypatch):
    model, ckpt = _checkpointer(tmp_path)
    ckpt.save("model_a")
    before = model.weight.detach().clone()
    real_fsync, calls = os.fsync, itertools.count()

    def fail_second_file(fd):  # model_b.pth's fsync, then its directory's, then last_checkpoint's
        if next(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_second_file)
    with pytest.raises(CheckpointWriteError, match=r"last_checkpoint: Input/output error.*model_b"):
        ckpt.save("model_b")
    monkeypatch.undo()
    _assert_previous_intact(tmp_path, before)
    assert (tmp_path / "model_b.pth").is_file()  # whole, just not pointed to


def test_resume_names_a_missing_checkpoint(tmp_path):
    model, ckpt = _checkpointer(tmp_path)
    (tmp_path / "last_checkpoint").write_text("model_gone.pth")
    with pytest.raises(FileNotFoundError, match=r"names .*model_gone.pth, which does not exist"):
        ckpt.resume_or_load("", resume=True)


# ---------------------------------------------------------------------------------------------
# CPU AMP


def test_amp_on_cpu_trains_in_bfloat16(tmp_path, synthetic):
    cfg = tiny_setup(synthetic, tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "True")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    dtypes = []
    conv = trainer.model.backbone.bottom_up.res3[0].conv2
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = conv.weight.detach().clone()
    trainer.train()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert conv.weight.dtype == torch.float32 and not torch.equal(conv.weight, before)
    assert trainer._trainer.grad_scaler is None  # bf16 needs no loss scaling


def test_amp_on_an_unsupported_device_is_a_clear_error():
    from resnext_det.training import GuardedTrainer

    with pytest.raises(ValueError, match=r"SOLVER.AMP.ENABLED supports .* got MODEL.DEVICE 'meta'"):
        GuardedTrainer(torch.nn.Linear(1, 1), [], None, amp=True, device="meta")


# ---------------------------------------------------------------------------------------------
# Data order


def _detectron2_stream(sampler_cls, *args, n: int, **kwargs) -> list[int]:
    s = sampler_cls(*args, **kwargs)
    s._rank, s._world_size = 0, 1
    return list(itertools.islice(iter(s), n))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("start", [0, 5, 8, 19, 40])
def test_resumable_sampler_continues_detectron2s_stream(world, start):
    """Rank r of w after ``start`` indices == detectron2's single stream [start + r :: w]."""
    factors = torch.tensor([1.0, 2.5, 0.5, 1.0, 3.0, 1.0, 1.0, 0.3])
    for cls, args, kwargs in (
        (TrainingSampler, (8,), {"seed": 3}),
        (TrainingSampler, (8,), {"seed": 3, "shuffle": False}),
        (RepeatFactorTrainingSampler, (factors,), {"seed": 3}),
    ):
        full = _detectron2_stream(cls, *args, n=start + 30 * world, **kwargs)
        for rank in range(world):
            base = cls(*args, **kwargs)
            base._rank, base._world_size = rank, world
            got = list(itertools.islice(ResumableSampler(base, start=start), 25))
            assert got == full[start + rank :: world][:25], (cls.__name__, rank)


def test_resumed_loader_draws_the_images_the_uninterrupted_one_would(tmp_path, synthetic):
    cfg = tiny_setup(synthetic, tmp_path)

    def batches(start: int, n: int) -> list[list[str]]:
        loader = Trainer.build_train_loader(cfg, seed=11, start=start)
        return [[d["file_name"] for d in b] for b in itertools.islice(iter(loader), n)]

    ims = cfg.SOLVER.IMS_PER_BATCH
    assert batches(0, 7)[3:] == batches(3 * ims, 4)  # 8 images: crosses an epoch boundary
    assert batches(0, 2) != batches(0 + ims, 2)


def test_resumable_sampler_rejects_bad_input():
    with pytest.raises(TypeError, match="needs a detectron2 training sampler"):
        ResumableSampler(torch.utils.data.SequentialSampler(range(3)))
    with pytest.raises(ValueError, match="start must be a non-negative integer; got -1"):
        ResumableSampler(TrainingSampler(3, seed=0), start=-1)

"""LazyConfig: the Python configs against the yacs configs of the same models, and a LazyConfig
training (tiny widths, tiny images) that resumes exactly."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from conftest import REPO, randomize_norm_stats
from detectron2.config import instantiate
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler

from resnext_det.commands.lazy_train import run as main
from resnext_det.config import load_config
from resnext_det.errors import ConfigError
from resnext_det.lazy import LazyTrainer, configure_lazy_for_weights, load_lazy_config
from resnext_det.training import NonFiniteLossError

CONFIGS = REPO / "configs"
LAZY = CONFIGS / "lazy"
TINY = LAZY / "tests" / "faster_rcnn_tiny.py"
PAIRS = {
    "faster_rcnn_R_50_FPN_1x": "faster_rcnn_R_50_FPN_1x.yaml",
    "faster_rcnn_R_101_FPN_3x": "faster_rcnn_R_101_FPN_3x.yaml",
    "faster_rcnn_X_50_32x4d_FPN_1x": "faster_rcnn_X_50_32x4d_FPN_1x.yaml",
    "faster_rcnn_X_101_32x8d_FPN_3x": "faster_rcnn_X_101_32x8d_FPN_3x.yaml",
}


def both(name: str, *, device: str = "cpu"):
    lazy = load_lazy_config(LAZY / f"{name}.py", [f"train.device={device}"])
    yacs = load_config(CONFIGS / PAIRS[name], ["MODEL.DEVICE", device])
    return lazy, yacs


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_lazy_config_builds_the_yacs_model(name):
    lazy, yacs = both(name, device="meta")
    with torch.device("meta"):
        a = instantiate(lazy.model)
        b = build_model(yacs)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert a.backbone.bottom_up.spec == b.backbone.bottom_up.spec
    assert a.input_format == yacs.INPUT.FORMAT
    assert list(lazy.model.pixel_std) == pytest.approx(yacs.MODEL.PIXEL_STD)
    assert list(lazy.model.pixel_mean) == pytest.approx(yacs.MODEL.PIXEL_MEAN)
    assert lazy.train.init_checkpoint == yacs.MODEL.WEIGHTS


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_lazy_schedule_and_data_are_the_yacs_ones(name):
    lazy, yacs = both(name)
    assert lazy.train.max_iter == yacs.SOLVER.MAX_ITER
    assert lazy.dataloader.train.total_batch_size == yacs.SOLVER.IMS_PER_BATCH
    assert lazy.optimizer.lr == yacs.SOLVER.BASE_LR
    assert lazy.optimizer.weight_decay == yacs.SOLVER.WEIGHT_DECAY
    resize = lazy.dataloader.train.mapper.augmentations[0]
    assert tuple(resize.short_edge_length) == tuple(yacs.INPUT.MIN_SIZE_TRAIN)
    assert resize.max_size == yacs.INPUT.MAX_SIZE_TRAIN
    assert lazy.dataloader.train.mapper.image_format == yacs.INPUT.FORMAT
    # The learning rate at every iteration that matters: warm-up, steps, end.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = build_lr_scheduler(yacs, opt)
    ours = instantiate(lazy.lr_multiplier)
    n = yacs.SOLVER.MAX_ITER
    for it in [0, 500, 999, 1000, *yacs.SOLVER.STEPS, yacs.SOLVER.STEPS[0] - 1, n - 1]:
        assert ours(it / n) == pytest.approx(theirs._multiplier(it / n), rel=1e-6), it


def test_lazy_and_yacs_models_give_equal_outputs_from_the_same_weights():
    lazy, yacs = both("faster_rcnn_X_50_32x4d_FPN_1x")
    # Random weights score below the default 0.05: keep every detection, on both sides.
    lazy.model.roi_heads.box_predictor.test_score_thresh = 0.0
    yacs.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    a = randomize_norm_stats(instantiate(lazy.model)).eval()
    b = build_model(yacs).eval()
    b.load_state_dict(a.state_dict())
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        fa = a.backbone(a.preprocess_image([{"image": image}]).tensor)
        fb = b.backbone(b.preprocess_image([{"image": image}]).tensor)
        out_a = a([{"image": image}])[0]["instances"]
        out_b = b([{"image": image}])[0]["instances"]
    assert list(fa) == ["p2", "p3", "p4", "p5", "p6"] == list(fb)
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0)
    assert len(out_a) == len(out_b) > 0
    torch.testing.assert_close(out_a.pred_boxes.tensor, out_b.pred_boxes.tensor, rtol=0, atol=0)
    torch.testing.assert_close(out_a.scores, out_b.scores, rtol=0, atol=0)


def test_lsj_pair_differs_only_in_the_backbone():
    x = load_lazy_config(LAZY / "mask_rcnn_X_50_32x4d_FPN_100ep_LSJ.py")
    r = load_lazy_config(LAZY / "mask_rcnn_R_50_FPN_100ep_LSJ.py")
    sx, sr = (
        instantiate(x.model.backbone.bottom_up.spec),
        instantiate(r.model.backbone.bottom_up.spec),
    )
    assert (sx.name, sr.name) == ("X-50-32x4d", "R-50")
    assert sx.replace(cardinality=1, width_per_group=64) == sr
    assert x.train.max_iter == r.train.max_iter == 184375
    assert x.dataloader.train.total_batch_size == 64
    assert type(instantiate(x.dataloader.train.mapper.augmentations[0])).__name__ == "ResizeScale"


def test_weights_set_the_lazy_conventions(tmp_path):
    """A torchvision file in a config left at detectron2's BGR defaults: the conventions are set
    from the file; in our torchvision config they match already."""
    import torchvision

    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    cfg = load_lazy_config(LAZY / "faster_rcnn_R_50_FPN_1x.py", [f"train.init_checkpoint={path}"])
    assert configure_lazy_for_weights(cfg) == {}
    cfg.model.input_format = "BGR"
    cfg.dataloader.train.mapper.image_format = "BGR"
    cfg.model.pixel_mean = [103.53, 116.28, 123.675]
    cfg.model.pixel_std = [1.0, 1.0, 1.0]
    changes = configure_lazy_for_weights(cfg)
    assert cfg.model.input_format == "RGB" == cfg.dataloader.train.mapper.image_format
    assert list(cfg.model.pixel_mean) == pytest.approx([123.675, 116.28, 103.53])
    assert "model.pixel_std" in changes
    # An architecture the file does not hold: the yacs check's error, with the lazy keys named.
    cfg.model.backbone.bottom_up.spec.cardinality = 32
    cfg.model.backbone.bottom_up.spec.width_per_group = 4
    with pytest.raises(ValueError, match="R-50 backbone but the config builds X-50-32x4d"):
        configure_lazy_for_weights(cfg)


def test_bad_lazy_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="must be a .py file"):
        load_lazy_config(CONFIGS / "faster_rcnn_R_50_FPN_1x.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_lazy_config(tmp_path / "nope.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no model or train"):
        load_lazy_config(tmp_path / "empty.py")
    with pytest.raises(ConfigError, match="key=value"):
        load_lazy_config(TINY, ["train.max_iter", "3"])


# ---------------------------------------------------------------------------------------------
# Training and exact resume.


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


@pytest.fixture
def registered(synthetic):
    synthetic.register("synthetic")
    return synthetic


def args(out: Path, *opts: str, resume: bool = False, eval_only: bool = False):
    return argparse.Namespace(
        config_file=str(TINY),
        opts=[f"train.output_dir={out}", *opts],
        resume=resume,
        eval_only=eval_only,
    )


class _Interrupt(Exception):
    pass


def test_lazy_training_resumes_exactly(tmp_path, registered):
    from detectron2.engine import HookBase

    from resnext_det.lazy import setup

    main(args(tmp_path / "a"))
    reference = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)["model"]

    # Interrupted during iteration 5, after the checkpoint of iteration 3 (period 2): resumed
    # from it, in a fresh trainer.
    trainer = LazyTrainer(setup(args(tmp_path / "b")))

    class Stop(HookBase):
        def after_step(self):
            if self.trainer.iter == 4:
                raise _Interrupt

    trainer.register_hooks([Stop()])
    trainer.resume_or_load(resume=False)
    with pytest.raises(_Interrupt):
        trainer.train()
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not (tmp_path / "b" / "model_final.pth").exists()
    at_3 = torch.load(tmp_path / "b" / "model_0000003.pth", weights_only=True)["model"]
    assert any(not torch.equal(at_3[k], reference[k]) for k in reference)  # 4 more steps count
    main(args(tmp_path / "b", resume=True))
    resumed = torch.load(tmp_path / "b" / "model_final.pth", weights_only=True)["model"]
    assert resumed.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=0, atol=1e-6, msg=k)
    # What detectron2's writers leave: TensorBoard events and metrics.json.
    assert list((tmp_path / "a").glob("events.out.tfevents.*"))
    assert (tmp_path / "a" / "metrics.json").read_text().strip()
    assert (tmp_path / "a" / "config.yaml").is_file()
    # --eval-only on the final checkpoint: COCO box AP of the val split.
    final = tmp_path / "a" / "model_final.pth"
    results = main(args(tmp_path / "c", f"train.init_checkpoint={final}", eval_only=True))
    assert "AP" in results["bbox"]


def test_lazy_training_stops_on_a_non_finite_loss(tmp_path, registered):
    with pytest.raises(NonFiniteLossError, match="Loss is not finite at iteration"):
        main(args(tmp_path, "optimizer.lr=1e12", "lr_multiplier.warmup_length=0"))


def test_a_sampler_in_the_config_is_refused(tmp_path, registered):
    from resnext_det.lazy import setup

    cfg = setup(args(tmp_path))
    cfg.dataloader.train.sampler = 3
    with pytest.raises(ConfigError, match="dataloader.train.sampler is set"):
        LazyTrainer(cfg)


def test_the_tool_trains_from_the_command_line(tmp_path, synthetic):
    import os
    import subprocess
    import sys

    cmd = [
        sys.executable, str(REPO / "tools" / "lazyconfig_train_net.py"), "--config-file", str(TINY),
        "--register", "synthetic_train", str(synthetic.train_json), str(synthetic.train_image_root),
        "--register", "synthetic_val", str(synthetic.val_json), str(synthetic.val_image_root),
        f"train.output_dir={tmp_path}", "train.max_iter=2",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert "copypaste: Task: bbox" in proc.stdout + proc.stderr  # the final evaluation ran


def test_the_tool_refuses_an_output_dir_among_the_photos(synthetic, capsys):
    """As tools/train_net.py: the run's files never go among the photos of an image folder."""
    from resnext_det.commands.lazy_train import main

    images = synthetic.train_image_root
    before = sorted(p.name for p in images.iterdir())
    argv = [
        "--config-file", str(TINY),
        "--register", "synthetic_train", str(synthetic.train_json), str(images),
        f"train.output_dir={images}", "train.max_iter=2",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "is the image folder of dataset 'synthetic_train'" in err, err
    assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in images.iterdir()) == before


def _readme_blocks(section: str) -> list[str]:
    """The fenced blocks of a README.md section, in order."""
    import re

    text = (REPO / "README.md").read_text()
    start = text.index(section) + len(section)
    end = text.find("\n## ", start)
    return re.findall(r"```\w*\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_readme_own_data_lazyconfig_works_as_written(tmp_path):
    # Issue 27: "LazyConfig on your own data needed 14 overrides". The README's file and command,
    # run as written; the test only makes the generated set small and the run short (test-only
    # overrides appended after the README's: one iteration of one image, no download).
    import os
    import shlex
    import subprocess
    import sys

    from resnext_det.data import make_synthetic_coco

    section = "## Your own data with a LazyConfig"
    make_data, config_file, command = _readme_blocks(section)
    assert "make_synthetic_coco('shapes')" in make_data
    make_synthetic_coco(tmp_path / "shapes", num_train=2, num_val=2, image_size=64)
    (tmp_path / "my_data.py").write_text(config_file)
    command = command.replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[:2] == ["resnext-det", "lazy-train"]
    fast = ["train.max_iter=1", "dataloader.train.total_batch_size=1",
            "train.init_checkpoint=", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "resnext_det.cli", *argv[1:], *fast],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = tmp_path / "out" / "shapes" / "model_final.pth"
    record = torch.load(final, map_location="cpu", weights_only=True)["resnext_det"]
    assert record["thing_classes"] == ["disc", "square", "triangle", "cross"]
    assert "copypaste: Task: bbox" in proc.stdout + proc.stderr  # evaluated on shapes_val


def test_use_datasets_refuses_what_it_cannot_set():
    from resnext_det.lazy import use_datasets

    cfg = load_lazy_config(TINY)
    assert use_datasets(cfg, "a_train", "a_val", num_classes=2) is cfg
    assert cfg.model.roi_heads.num_classes == 2 and cfg.dataloader.test.dataset.names == "a_val"
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1; got 0"):
        use_datasets(cfg, "a_train", num_classes=0)
    del cfg.model.roi_heads.num_classes
    with pytest.raises(ConfigError, match="none of model.roi_heads.num_classes"):
        use_datasets(cfg, "a_train", num_classes=2)


def test_lazy_cpu_training_gets_the_yacs_fast_defaults(tmp_path, registered):
    """One trainer assembly: a LazyConfig trained on the CPU gets cfg.CPU_TRAINING's defaults
    (channels_last, bf16 where native) exactly as a yacs config does, and
    train.cpu_training.KEY=value changes them."""
    from resnext_det.config import load_config
    from resnext_det.lazy import setup
    from resnext_det.speed import cpu_training_settings

    trainer = LazyTrainer(setup(args(tmp_path / "a")))
    yacs = load_config()
    yacs.MODEL.DEVICE = "cpu"
    assert trainer.cpu_training == cpu_training_settings(yacs) is not None
    conv = trainer.model.backbone.bottom_up.res3[0].conv2.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    plain = LazyTrainer(setup(args(tmp_path / "b", "+train.cpu_training.ENABLED=False")))
    assert plain.cpu_training is None
    conv = plain.model.backbone.bottom_up.res3[0].conv2.weight
    assert not conv.is_contiguous(memory_format=torch.channels_last)

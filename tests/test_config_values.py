"""resnext_det.training.validate.check_training_config: a config value detectron2 would crash on
(assertion, division by zero, shape error) or misuse is one ConfigError line naming the key, the
value and what is allowed; every shipped config (and detectron2's model zoo) passes."""

from __future__ import annotations

from pathlib import Path

import detectron2.model_zoo
import pytest
import torch
from detectron2.data import DatasetCatalog

from resnext_det.config import load_config
from resnext_det.errors import ConfigError
from resnext_det.training.validate import check_training_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"


def tiny(*opts) -> object:
    """The tiny test config, its datasets named in DATASETS.COCO_REGISTER (as --register does;
    the files are not read by the check)."""
    cfg = load_config(TINY, list(opts))
    for name in ("synthetic_train", "synthetic_val"):
        cfg.DATASETS.COCO_REGISTER.append([name, f"/nowhere/{name}.json", "/nowhere"])
    return cfg


def refused(cfg, *, eval_only: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        check_training_config(cfg, eval_only=eval_only)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_tiny_config_passes_for_training_and_evaluation():
    check_training_config(tiny(), eval_only=False)
    check_training_config(tiny(), eval_only=True)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("SOLVER.IMS_PER_BATCH", "0", "positive integer"),
        ("SOLVER.IMS_PER_BATCH", "-2", "positive integer"),
        ("SOLVER.MAX_ITER", "-5", "positive integer"),
        ("SOLVER.MAX_ITER", "0", "positive integer"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "positive integer"),
        ("SOLVER.CHECKPOINT_PERIOD", "-1", "positive integer"),
        ("SOLVER.WARMUP_ITERS", "-1", "integer >= 0"),
        ("SOLVER.BASE_LR", "-0.01", "finite number >= 0"),
        ("SOLVER.BASE_LR", "float('nan')", "finite number >= 0"),
        ("SOLVER.BASE_LR", "float('inf')", "finite number >= 0"),
        ("SOLVER.WARMUP_METHOD", "cosine", "linear, constant"),
        ("SOLVER.LR_SCHEDULER_NAME", "StepLR", "WarmupMultiStepLR, WarmupCosineLR"),
        ("SOLVER.STEPS", "(6, 3)", "strictly increasing"),
        ("SOLVER.STEPS", "(0,)", "strictly increasing"),
        ("SOLVER.STEPS", "(8,)", "below SOLVER.MAX_ITER (8)"),
        ("MODEL.ROI_HEADS.NUM_CLASSES", "0", "positive integer"),
        ("MODEL.ROI_HEADS.NUM_CLASSES", "-1", "positive integer"),
        ("MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]", "must not be 0"),
        ("DATALOADER.NUM_WORKERS", "-1", "integer >= 0"),
        ("MODEL.DEVICE", "gpu", "cpu, cuda or cuda:N"),
        ("MODEL.DEVICE", "meta", "cpu, cuda or cuda:N"),
    ],
)
def test_a_bad_value_is_one_line_naming_key_and_value(key, value, words):
    if value.startswith("float("):  # not a yaml literal: set the float itself
        cfg = tiny()
        section, name = key.split(".")
        cfg[section][name] = eval(value)
        shown = repr(eval(value))
    else:
        cfg, shown = tiny(key, value), value.strip("()").split(",")[0]
    message = refused(cfg)
    assert key in message and words in message and shown in message


def test_pixel_mean_of_another_length_than_pixel_std():
    message = refused(tiny("MODEL.PIXEL_MEAN", "[1, 2]"))
    assert "MODEL.PIXEL_MEAN" in message and "MODEL.PIXEL_STD" in message and "[1, 2]" in message


def test_pixel_statistics_must_match_the_input_channels():
    message = refused(tiny("MODEL.PIXEL_MEAN", "[1.0]", "MODEL.PIXEL_STD", "[1.0]"))
    assert "MODEL.PIXEL_MEAN has 1 values" in message and "INPUT.FORMAT BGR" in message
    assert "3 channels" in message
    # gray: one value, or three (the channel broadcast to a 3-channel network)
    for stats in ("[100.0]", "[100.0, 100.0, 100.0]"):
        gray = tiny("INPUT.FORMAT", "L", "MODEL.PIXEL_MEAN", stats, "MODEL.PIXEL_STD", stats)
        check_training_config(gray, eval_only=False)
    message = refused(
        tiny("INPUT.FORMAT", "L", "MODEL.PIXEL_MEAN", "[1.0, 2.0]", "MODEL.PIXEL_STD", "[1.0, 2.0]")
    )
    assert "INPUT.FORMAT L" in message and "1 or 3" in message


def test_num_classes_of_the_heads_the_meta_architecture_builds():
    # RetinaNet reads RETINANET.NUM_CLASSES, not ROI_HEADS'
    retina = ("MODEL.META_ARCHITECTURE", "RetinaNet")
    check_training_config(tiny(*retina, "MODEL.ROI_HEADS.NUM_CLASSES", "0"), eval_only=False)
    message = refused(tiny(*retina, "MODEL.RETINANET.NUM_CLASSES", "0"))
    assert "MODEL.RETINANET.NUM_CLASSES" in message and "got 0" in message
    # a proposal network has no classes
    rpn = tiny("MODEL.META_ARCHITECTURE", "ProposalNetwork", "MODEL.ROI_HEADS.NUM_CLASSES", "0")
    check_training_config(rpn, eval_only=False)
    message = refused(
        tiny("MODEL.KEYPOINT_ON", "True", "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "0")
    )
    assert "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS" in message


def test_steps_beyond_max_iter_are_detectron2s_warning_not_an_error():
    check_training_config(tiny("SOLVER.MAX_ITER", "1"), eval_only=False)  # STEPS (5,)
    check_training_config(tiny("SOLVER.STEPS", "(3, 5, 100)"), eval_only=False)
    check_training_config(tiny("SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR"), eval_only=False)


def test_eval_period_zero_or_negative_means_at_the_end_only():
    for period in ("0", "-1"):
        check_training_config(tiny("TEST.EVAL_PERIOD", period), eval_only=False)


def test_eval_only_skips_the_training_keys():
    cfg = tiny(
        "SOLVER.IMS_PER_BATCH", "0",
        "SOLVER.MAX_ITER", "-5",
        "SOLVER.CHECKPOINT_PERIOD", "0",
        "SOLVER.BASE_LR", "-1.0",
        "SOLVER.WARMUP_ITERS", "-1",
        "SOLVER.STEPS", "(3, 2)",
        "DATASETS.TRAIN", "('nonexist',)",
    )  # fmt: skip
    check_training_config(cfg, eval_only=True)
    # the model is still built and evaluated: its keys still count
    assert "NUM_CLASSES" in refused(tiny("MODEL.ROI_HEADS.NUM_CLASSES", "0"), eval_only=True)
    assert "DATASETS.TEST" in refused(tiny("DATASETS.TEST", "('nonexist',)"), eval_only=True)


def test_unknown_dataset_names_the_key_the_nearest_name_and_how_to_register():
    message = refused(tiny("DATASETS.TRAIN", "('synthetic_trian',)"))
    assert message.startswith("DATASETS.TRAIN: no dataset named 'synthetic_trian'")
    assert "did you mean 'synthetic_train'?" in message
    assert "--register NAME JSON IMAGE_ROOT" in message and "DATASETS.COCO_REGISTER" in message
    message = refused(tiny("DATASETS.TRAIN", "('nonexist',)"))
    assert "'nonexist'" in message and "coco_2017_train" not in message  # no list of names
    assert len(message) < 300
    message = refused(tiny("DATASETS.TEST", "('synthetic_val', 'nonexist')"))
    assert message.startswith("DATASETS.TEST: no dataset named 'nonexist'")


def test_known_datasets_are_the_catalogs_and_those_registered_later():
    # detectron2's built-in names are known, registered or not by the config
    check_training_config(tiny("DATASETS.TRAIN", "('coco_2017_train',)"), eval_only=False)
    # a name given as one string, as detectron2 allows
    one = tiny()
    one.DATASETS.TRAIN = "synthetic_train"
    check_training_config(one, eval_only=False)
    # without the COCO_REGISTER entries the tiny config's names are unknown
    bare = load_config(TINY)
    if "synthetic_train" not in DatasetCatalog.list():
        assert "'synthetic_train'" in refused(bare)
    assert "DATASETS.TRAIN is empty" in refused(tiny("DATASETS.TRAIN", "()"))
    check_training_config(tiny("DATASETS.TEST", "()"), eval_only=False)  # nothing to evaluate


def test_cuda_without_a_gpu_says_to_use_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = refused(tiny("MODEL.DEVICE", "cuda"))
    assert "MODEL.DEVICE is 'cuda'" in message and "no CUDA device" in message
    assert "MODEL.DEVICE cpu" in message


def test_cuda_index_beyond_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_training_config(tiny("MODEL.DEVICE", "cuda:1"), eval_only=False)
    message = refused(tiny("MODEL.DEVICE", "cuda:2"))
    assert "'cuda:2'" in message and "cuda:0 to cuda:1" in message


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_passes_where_there_is_one():
    check_training_config(tiny("MODEL.DEVICE", "cuda"), eval_only=False)


def _shipped_configs() -> list[Path]:
    zoo = Path(detectron2.model_zoo.__file__).resolve().parent / "configs"
    return sorted((REPO / "configs").rglob("*.yaml")) + sorted(zoo.rglob("*.yaml"))


def test_every_shipped_and_model_zoo_config_passes():
    known = set(DatasetCatalog.list())
    configs = _shipped_configs()
    assert len(configs) > 20
    for path in configs:
        cfg = load_config(path, ["MODEL.DEVICE", "cpu"])
        for name in [*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST]:
            if name not in known:  # registered by the user with --register, as documented
                cfg.DATASETS.COCO_REGISTER.append([name, "x.json", "images"])
        for eval_only in (False, True):
            check_training_config(cfg, eval_only=eval_only)


# -- the command: build_config calls the check before anything is written ------------------------


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("coco"), num_train=2, num_val=1, image_size=64
    )


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be a positive integer"),
        (["DATASETS.TRAIN", "('nonexist',)"], "DATASETS.TRAIN: no dataset named 'nonexist'"),
        (["MODEL.PIXEL_MEAN", "[1,2]"], "MODEL.PIXEL_MEAN and MODEL.PIXEL_STD"),
    ],
)
def test_train_command_refuses_in_one_line_before_writing(coco, tmp_path, capsys, opts, words):
    from resnext_det.commands.train import main

    out = tmp_path / "out"
    argv = [
        "--config-file", str(TINY),
        "--register", "synthetic_train", str(coco.train_json), str(coco.train_image_root),
        "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out), *opts,
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {words}" in err, err
    assert not out.exists()

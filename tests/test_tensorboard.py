"""Training writes detectron2's TensorBoard events and metrics.json in OUTPUT_DIR (the yacs
Trainer through DefaultTrainer.build_writers, the LazyConfig one through default_writers)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=4, num_val=2, image_size=64, seed=0
    )


def test_training_writes_tensorboard_events_and_metrics_json(tmp_path, synthetic):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from resnext_det.commands.train import argument_parser
    from resnext_det.training import setup, train

    argv = [
        "--config-file", str(TINY),
        "--register", "synthetic_train", str(synthetic.train_json), str(synthetic.train_image_root),
        "OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "3",
    ]  # fmt: skip
    train(setup(argument_parser().parse_args(argv)))
    (events,) = tmp_path.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"total_loss", "lr", "loss_cls"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("total_loss")][-1] == 2  # the last iteration
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert lines[-1]["iteration"] == 2 and "total_loss" in lines[-1]

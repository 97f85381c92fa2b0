"""A run's OUTPUT_DIR never writes over, or among, what the run reads (training.outputs).

Found by trying the commands as a careless user: ``OUTPUT_DIR`` the folder of the user's own
``config.yaml`` replaced that file by the full dump (exit 0), ``OUTPUT_DIR`` the image folder put
the run's files among the photos, and fine-tuning from ``OUTPUT_DIR/model_final.pth`` replaced
it. Each is now refused before anything is written; the usual re-use of a run's own folder
(``--config-file out/config.yaml --resume`` / ``--eval-only MODEL.WEIGHTS out/model_final.pth``)
still works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from resnext_det.commands.train import main as train_main
from resnext_det.config import load_config
from resnext_det.io import OutputLocationError
from resnext_det.training import train_seed_runs
from resnext_det.training.outputs import check_run_folder

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("syn"), num_train=2, num_val=1, image_size=64, seed=0
    )


def _train(data, config: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config-file", str(config),
        "--register", "synthetic_train", str(data.train_json), str(data.train_image_root),
        "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out), *extra,
    ]  # fmt: skip


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _refused(capsys, argv: list[str], *must: str) -> str:
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in must:
        assert text in err, err
    return err


def test_a_hand_written_config_in_output_dir_is_not_replaced(tmp_path, data, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text(f"_BASE_: {TINY}\n# my notes\n")
    before = _tree(folder)
    _refused(
        capsys,
        _train(data, folder / "config.yaml", folder),
        "which would replace the config file",
        "copy that file elsewhere or choose another OUTPUT_DIR",
    )
    assert _tree(folder) == before  # not even a log or a lock


def test_output_dir_the_image_folder_is_refused(tmp_path, data, capsys):
    images = data.train_image_root
    before = _tree(images)
    _refused(capsys, _train(data, TINY, images), "is the image folder of dataset 'synthetic_train'")
    assert _tree(images) == before


def test_fine_tuning_from_the_output_dirs_own_final_model_is_refused(tmp_path, data, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"the user's earlier model")
    before = _tree(out)
    argv = _train(data, TINY, out, "MODEL.WEIGHTS", str(out / "model_final.pth"))
    _refused(capsys, argv, "would replace MODEL.WEIGHTS")
    assert _tree(out) == before


def test_a_runs_own_folder_may_be_read_again(tmp_path, data):
    """An earlier run's dump as the config (--resume, --eval-only) and its final model for an
    evaluation are fine; so is an OUTPUT_DIR above the datasets."""
    out = tmp_path / "run"
    out.mkdir()
    cfg = load_config(TINY, _train(data, TINY, out)[6:])
    cfg.defrost()
    cfg.DATASETS.COCO_REGISTER = [
        ["synthetic_train", str(data.train_json), str(data.train_image_root)]
    ]
    (out / "config.yaml").write_text(cfg.dump())  # as the run wrote it
    check_run_folder(cfg, str(out / "config.yaml"), training=True)
    cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
    check_run_folder(cfg, str(out / "config.yaml"), training=False)
    with pytest.raises(OutputLocationError, match="would replace MODEL.WEIGHTS"):
        check_run_folder(cfg, str(out / "config.yaml"), training=True)
    (out / "config.yaml").write_text("# my notes\n" + cfg.dump())  # a person's now
    with pytest.raises(OutputLocationError, match="would replace the config file"):
        check_run_folder(cfg, str(out / "config.yaml"), training=False)
    cfg.MODEL.WEIGHTS = ""
    for fine in (Path(data.train_image_root).parent, Path(data.train_image_root) / "runs"):
        cfg.OUTPUT_DIR = str(fine)  # above or below the images: the json lists what is read
        check_run_folder(cfg, str(TINY), training=True)


def test_seed_runs_check_every_runs_folder_before_any_starts(tmp_path, data):
    """Seed 1 would start from the model_final.pth its own run replaces: refused before seed 0
    starts."""
    out = tmp_path / "seeds"
    (out / "seed_1").mkdir(parents=True)
    (out / "seed_1" / "model_final.pth").write_bytes(b"an earlier model")
    cfg = load_config(TINY, _train(data, TINY, out)[6:])
    cfg.defrost()
    cfg.DATASETS.COCO_REGISTER = [
        ["synthetic_train", str(data.train_json), str(data.train_image_root)]
    ]
    cfg.MODEL.WEIGHTS = str(out / "seed_1" / "model_final.pth")
    with pytest.raises(OutputLocationError, match="seed_1/model_final.pth' that it reads"):
        train_seed_runs(cfg, [0, 1])
    assert sorted(p.name for p in out.iterdir()) == ["seed_1"]


def test_a_malformed_register_entry_or_one_dataset_name_as_a_string_is_not_a_crash(tmp_path):
    """The check reads what is well formed and leaves the rest to the checks that name it."""
    cfg = load_config(TINY)
    cfg.defrost()
    cfg.DATASETS.TRAIN = "synthetic_train"  # detectron2 takes one name as a string too
    cfg.DATASETS.COCO_REGISTER = [["a", 3, None], "xyz"]
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    check_run_folder(cfg, None, training=True)

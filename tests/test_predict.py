"""Pictures of predictions (tools/predict.py) and the comparison gallery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from urllib.parse import quote

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.modeling import build_model
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnext_det.commands.predict import main
from resnext_det.config import load_config
from resnext_det.evaluation import compare_results, load_ground_truth, load_results
from resnext_det.evaluation import match_detections as match
from resnext_det.evaluation.gallery import per_image_counts
from resnext_det.predict import expand_inputs, parse_model_spec

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=2, num_val=6, image_size=64, seed=0
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A whole tiny detector's checkpoint, and one of its backbone only."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model(load_config(TINY))
    state = model.state_dict()
    torch.save({"model": state}, d / "whole.pth")
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, d / "backbone_only.pth")
    return d


def predict(*argv) -> int:
    return main(["--no-progress"] + [str(a) for a in argv])


def test_predict_on_a_folder_writes_pictures_and_coco_results(tmp_path, synthetic, checkpoints):
    out = tmp_path / "out"
    code = predict(
        "--config-file", TINY, "--input", synthetic.val_image_root, "--output", out,
        "--confidence-threshold", 0.0, "--opts", "MODEL.WEIGHTS", checkpoints / "whole.pth",
    )  # fmt: skip
    assert code == 0
    inputs = sorted(synthetic.val_image_root.glob("*.png"))
    pictures = sorted(out.glob("*.png"))
    assert [p.name for p in pictures] == [p.stem + ".png" for p in inputs]
    for pic, src in zip(pictures, inputs):
        image = cv2.imread(str(pic))
        assert image is not None and image.shape[:2] == cv2.imread(str(src)).shape[:2]
    coco = COCO(str(out / "images.json"))
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert results, "threshold 0 keeps the random detector's detections"
    dets = coco.loadRes(str(out / "coco_instances_results.json"))
    assert len(dets.getAnnIds()) == len(results)
    assert {coco.imgs[i]["file_name"] for i in coco.getImgIds()} == {str(p) for p in inputs}


def test_class_names_travel_with_the_trained_weights(tmp_path, synthetic, monkeypatch):
    # Issue 27: a checkpoint trained on a registered data set labels its pictures and
    # images.json with the data set's classes in a process that never registered it.
    from detectron2.data import MetadataCatalog

    from resnext_det.predict import _metadata
    from resnext_det.weights.checkpointer import ResNeXtCheckpointer, dataset_classes

    MetadataCatalog.get("issue27_train").set(thing_classes=["raccoon", "cat", "dog", "owl"])
    torch.manual_seed(0)
    model = build_model(load_config(TINY))
    saver = ResNeXtCheckpointer(model, save_dir=str(tmp_path / "run"))
    saver.classes = dataset_classes(["issue27_train"])
    saver.save("model_final")
    weights = tmp_path / "run" / "model_final.pth"
    record = torch.load(weights, map_location="cpu", weights_only=True)["resnext_det"]
    assert record["thing_classes"] == ["raccoon", "cat", "dog", "owl"]

    drawn = []
    import resnext_det.predict as predict_module

    real_draw = predict_module._draw
    monkeypatch.setattr(
        predict_module,
        "_draw",
        lambda rgb, inst, meta, title: (
            drawn.append(meta.thing_classes) or real_draw(rgb, inst, meta, title)
        ),
    )
    out = tmp_path / "out"
    code = predict(
        "--config-file", TINY, "--input", synthetic.val_image_root, "--output", out,
        "--opts", "MODEL.WEIGHTS", weights, "DATASETS.TEST", "('not_registered',)",
        "DATASETS.TRAIN", "('not_registered',)",
    )  # fmt: skip
    assert code == 0
    categories = json.loads((out / "images.json").read_text())["categories"]
    assert [c["name"] for c in categories] == ["raccoon", "cat", "dog", "owl"]
    assert drawn and all(c == ["raccoon", "cat", "dog", "owl"] for c in drawn)
    cfg = load_config(TINY, ["MODEL.WEIGHTS", str(weights)])
    assert _metadata(cfg).thing_classes == ["raccoon", "cat", "dog", "owl"]


def test_output_is_a_file_a_folder_or_nothing_as_detectron2s_demo(
    tmp_path, synthetic, checkpoints, capsys, monkeypatch
):
    # Issue 27: `--output pic.jpg` made a folder called pic.jpg; outputs were always PNG;
    # --output was required.
    w = checkpoints / "whole.pth"
    src = sorted(synthetic.val_image_root.glob("*.png"))[0]
    jpg = tmp_path / "in" / "photo.jpg"
    jpg.parent.mkdir()
    cv2.imwrite(str(jpg), cv2.imread(str(src)))
    common = ["--config-file", TINY, "--confidence-threshold", 0.0]
    pic = tmp_path / "pic.jpg"
    assert predict(*common, "--input", src, "--output", pic, "--opts", "MODEL.WEIGHTS", w) == 0
    assert pic.is_file() and pic.read_bytes()[:2] == b"\xff\xd8"  # a JPEG, from its suffix
    out = tmp_path / "folder"
    assert predict(*common, "--input", jpg, src, "--output", out, "--opts", "MODEL.WEIGHTS", w) == 0
    assert (out / "photo.jpg").read_bytes()[:2] == b"\xff\xd8"  # the input's format kept
    assert (out / src.name).read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert predict(*common, "--input", jpg, src, "--output", tmp_path / "x.png", "--opts",
                   "MODEL.WEIGHTS", w) == 2  # fmt: skip
    assert "a picture file for 2 inputs" in capsys.readouterr().err
    # No --output: the detections are printed, nothing is written.
    monkeypatch.chdir(tmp_path / "in")
    assert predict(*common, "--input", jpg, "--opts", "MODEL.WEIGHTS", w) == 0
    said = capsys.readouterr().out
    assert f"{jpg.resolve()}: " in said and "nothing written" in said
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["photo.jpg"]


def test_threshold_and_glob_and_compare(tmp_path, synthetic, checkpoints):
    pattern = str(synthetic.val_image_root / "*.png")
    w = checkpoints / "whole.pth"
    high = tmp_path / "high"
    assert predict("--config-file", TINY, "--input", pattern, "--output", high,
                   "--confidence-threshold", 1.0, "--opts", "MODEL.WEIGHTS", w) == 0  # fmt: skip
    assert json.loads((high / "coco_instances_results.json").read_text()) == []
    side = tmp_path / "side"
    code = predict(
        "--input", pattern, "--output", side, "--confidence-threshold", 0.0,
        "--compare", f"R={TINY}:{w}", f"X={TINY}:{w}",
    )  # fmt: skip
    assert code == 0
    one = cv2.imread(str(next(iter(sorted(high.glob("*.png"))))))
    two = cv2.imread(str(sorted(side.glob("*.png"))[0]))
    assert two.shape[0] > one.shape[0]  # + title bars
    # Two bordered panels and a white gap between them (issue 27: boxes at a panel's edge ran
    # into the next panel).
    gap = two.shape[1] - 2 * (one.shape[1] + 2)
    assert gap >= 8
    middle = two[:, one.shape[1] + 2 : one.shape[1] + 2 + gap]
    assert (middle == 255).all()
    r = json.loads((side / "R" / "coco_instances_results.json").read_text())
    x = json.loads((side / "X" / "coco_instances_results.json").read_text())
    assert r == x and r  # the same weights on both sides


def test_partial_checkpoint_is_refused(tmp_path, synthetic, checkpoints, capsys):
    code = predict(
        "--config-file", TINY, "--input", synthetic.val_image_root, "--output", tmp_path,
        "--opts", "MODEL.WEIGHTS", checkpoints / "backbone_only.pth",
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "leave detector parameters at their random initialisation" in err
    assert "roi_heads.box_predictor" in err or "proposal_generator" in err
    assert not list(tmp_path.glob("*.png"))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        expand_inputs([str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match="no image files"):
        expand_inputs([str(tmp_path)])
    assert parse_model_spec("X=a/b.yaml:detectron2://x/y.pkl") == (
        "X", "a/b.yaml", "detectron2://x/y.pkl",
    )  # fmt: skip
    with pytest.raises(ValueError, match="NAME=CONFIG.yaml:WEIGHTS"):
        parse_model_spec("a.yaml:w.pth")


def test_a_run_that_cannot_start_creates_nothing(tmp_path, synthetic, checkpoints, capsys):
    """Missing weights, a --compare name that would collide with a picture or images.json, and an
    input name the results json cannot hold: one line each, refused before --output exists."""
    out = tmp_path / "out"
    image = sorted(synthetic.val_image_root.glob("*.png"))[0]
    weights = checkpoints / "whole.pth"
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(image, os.fsdecode(os.fsencode(odd) + b"/n\xff.png"))
    cases = [
        (["--config-file", TINY, "--input", image, "--opts", "MODEL.WEIGHTS", "nonexist.pth"],
         "weights 'nonexist.pth' does not exist (MODEL.WEIGHTS"),
        (["--compare", f"A={TINY}:{tmp_path / 'nowhere' / 'w.pth'}", f"B={TINY}:{weights}",
          "--input", image], "w.pth' does not exist (MODEL.WEIGHTS"),
        (["--compare", f"images.json={TINY}:{weights}", f"B={TINY}:{weights}", "--input", image],
         "model name 'images.json': its folder"),
        (["--compare", f"{image.name}={TINY}:{weights}", f"B={TINY}:{weights}", "--input", image],
         "would collide with a picture"),
        (["--config-file", TINY, "--input", odd, "--opts", "MODEL.WEIGHTS", weights],
         "the name is not valid UTF-8"),
    ]  # fmt: skip
    for argv, message in cases:
        k = argv.index("--opts") if "--opts" in argv else len(argv)
        assert predict(*argv[:k], "--output", out, *argv[k:]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
        assert not out.exists(), argv


def test_an_image_the_model_cannot_take_is_named(tmp_path, synthetic, checkpoints, capsys):
    """A 20000x3 strip resizes to no row at all; MIN_SIZE_TEST 100000 to 10^10 pixels (it was
    PIL's "height and width must be > 0" naming no image, and an out-of-memory kill)."""
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("RGB", (20000, 3), (90, 90, 90)).save(strip)
    weights = checkpoints / "whole.pth"
    image = sorted(synthetic.val_image_root.glob("*.png"))[0]
    for path, opts, size in [
        (strip, [], "would be 96x0 pixels"),
        (image, ["INPUT.MIN_SIZE_TEST", "100000", "INPUT.MAX_SIZE_TEST", "100000"],
         "would be 100000x100000 pixels"),
    ]:  # fmt: skip
        assert predict("--config-file", TINY, "--input", path, "--opts",
                       "MODEL.WEIGHTS", weights, *opts) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert f"--input image {path}: a " in err and size in err, err
        assert len(err.splitlines()) == 1, err


def test_the_tool_runs_from_the_command_line(tmp_path, synthetic, checkpoints):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "predict.py"), "--config-file", str(TINY),
         "--input", str(sorted(synthetic.val_image_root.glob("*.png"))[0]),
         "--output", str(tmp_path), "--opts", "MODEL.WEIGHTS", str(checkpoints / "whole.pth")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "predict: 100%" in proc.stderr  # tqdm's progress bar
    assert len(list(tmp_path.glob("*.png"))) == 1


# ---------------------------------------------------------------------------------------------
# Gallery


def noisy_results(gt_json, seed: int, keep: float) -> list[dict]:
    """Ground-truth boxes jittered, some dropped, plus false boxes; random scores."""
    rng = np.random.default_rng(seed)
    data = json.loads(gt_json.read_text())
    out = []
    for a in data["annotations"]:
        if rng.random() > keep:
            continue
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.1 * max(w, h), 2)
        box = [x + j[0], y + j[1], w, h]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": box, "score": float(rng.uniform(0.3, 1))})  # fmt: skip
    for img in data["images"]:
        out.append({"image_id": img["id"], "category_id": data["categories"][0]["id"],
                    "bbox": [1, 1, 10, 10], "score": float(rng.uniform(0.3, 1))})  # fmt: skip
    return out


def test_per_image_true_positives_equal_pycocotools(synthetic):
    results = noisy_results(synthetic.val_json, seed=1, keep=0.7)
    gt = load_ground_truth(synthetic.val_json)
    threshold = 0.5
    tp, _ = per_image_counts(match(gt, load_results(results, gt)), threshold)
    coco = COCO(str(synthetic.val_json))
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.evaluate()
    expected = dict.fromkeys(coco.getImgIds(), 0)
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0]:
            continue
        m = (np.asarray(e["dtMatches"])[0] > 0) & ~np.asarray(e["dtIgnore"])[0].astype(bool)
        expected[e["image_id"]] += int((m & (np.asarray(e["dtScores"]) >= threshold)).sum())
    assert dict(zip(gt.image_ids.tolist(), tp.tolist())) == expected
    assert sum(expected.values()) > 0


def test_comparison_report_has_a_gallery_of_the_images_that_differ_most(tmp_path, synthetic):
    """compare_results with the images draws, for each model against the baseline, the images
    where their (run-mean) true positives differ most, as PNGs that comparison.md lists and that
    are written all or nothing with the rest of the report."""
    gt = load_ground_truth(synthetic.val_json)
    base = [noisy_results(synthetic.val_json, seed=s, keep=1.0) for s in (2, 3)]
    other = [noisy_results(synthetic.val_json, seed=s, keep=0.4) for s in (4, 5, 6)]
    out = tmp_path / "cmp"
    kw = dict(bootstrap=0, progress=False, gallery_threshold=0.0)
    report = compare_results(
        gt, {"R": base, "X 32x4d": other}, out_dir=out, images=synthetic.val_image_root,
        gallery=3, **kw,
    )  # fmt: skip
    (g,) = report["gallery"]
    assert (g["baseline"], g["model"], g["runs"]) == ("R", "X 32x4d", {"R": 2, "X 32x4d": 3})
    assert 1 <= len(g["images"]) <= 3

    def mean_tp(runs, image_id):
        index = int(np.flatnonzero(gt.image_ids == image_id)[0])
        return np.mean([per_image_counts(match(gt, load_results(r, gt)), 0.0)[0][index]
                        for r in runs])  # fmt: skip

    diffs = []
    for e in g["images"]:
        assert e["true_positives"]["R"] == pytest.approx(mean_tp(base, e["image_id"]))
        assert e["true_positives"]["X 32x4d"] == pytest.approx(mean_tp(other, e["image_id"]))
        diffs.append(abs(e["true_positives"]["R"] - e["true_positives"]["X 32x4d"]))
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > 0
    md = (out / "comparison.md").read_text()
    assert "## Gallery: where X 32x4d and R differ most" in md
    for e in g["images"]:
        # the name through resnext_det.io.file_name_for, the link URL-quoted
        assert e["picture"].startswith("gallery/X%2032x4d_") and f"]({quote(e['picture'])})" in md
        assert str(out / e["picture"]) in report["outputs"]
        picture = cv2.imread(str(out / e["picture"]))
        source = cv2.imread(str(synthetic.val_image_root / e["file_name"]))
        assert picture is not None and picture.shape[1] >= 3 * source.shape[1]
    assert json.loads((out / "comparison.json").read_text())["gallery"][0]["images"] == g["images"]

    # A smaller gallery in the same folder leaves no picture of the earlier one behind.
    again = compare_results(gt, {"R": base, "X 32x4d": other}, out_dir=out,
                            images=synthetic.val_image_root, gallery=1, **kw)  # fmt: skip
    assert sorted(p.name for p in (out / "gallery").iterdir()) == [
        e["picture"].split("/")[1] for e in again["gallery"][0]["images"]
    ]
    # Two names that make the same file name still get a picture each.
    both = compare_results(gt, {"R": base, "X/1": other, "X_1": other}, out_dir=tmp_path / "two",
                           images=synthetic.val_image_root, gallery=1, **kw)  # fmt: skip
    pictures = [e["picture"] for g in both["gallery"] for e in g["images"]]
    on_disk = list((tmp_path / "two" / "gallery").iterdir())
    assert len(pictures) == 2 == len(set(pictures)) == len(on_disk)
    # Without the images (or with gallery=0) there is no gallery.
    plain = compare_results(gt, {"R": base, "X": other}, out_dir=tmp_path / "plain", **kw)
    assert "gallery" not in plain
    assert "Gallery" not in (tmp_path / "plain" / "comparison.md").read_text()
    with pytest.raises(ValueError, match="gallery must be"):
        compare_results(gt, {"R": base, "X": other}, gallery=-1)


def test_gallery_image_that_cannot_be_read_is_named_and_nothing_is_written(tmp_path, synthetic):
    gt = load_ground_truth(synthetic.val_json)
    results = {"R": noisy_results(synthetic.val_json, seed=2, keep=1.0),
               "X": noisy_results(synthetic.val_json, seed=2, keep=0.4)}  # fmt: skip
    out = tmp_path / "cmp"
    with pytest.raises(FileNotFoundError, match=r"gallery: image id \d+ .*elsewhere.*--image-root"):
        compare_results(gt, results, out_dir=out, images=tmp_path / "elsewhere", bootstrap=0,
                        progress=False, gallery_threshold=0.0)  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


def test_compare_tool_draws_the_gallery_in_results_mode(tmp_path, synthetic):
    from resnext_det.commands.compare import main as compare

    files = []
    for name, keep in (("r", 1.0), ("x", 0.4)):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps(noisy_results(synthetic.val_json, seed=2, keep=keep)))
        files.append(f)
    out = tmp_path / "cmp"
    argv = ["--gt", str(synthetic.val_json), "--results", f"R={files[0]}", "--results",
            f"X={files[1]}", "--bootstrap", "0", "--no-progress", "--out", str(out),
            "--image-root", str(synthetic.val_image_root), "--gallery", "2",
            "--gallery-threshold", "0.0"]  # fmt: skip
    assert compare(argv) == 0
    pictures = sorted((out / "gallery").glob("X_*.png"))
    assert 1 <= len(pictures) <= 2
    md = (out / "comparison.md").read_text()
    assert all(f"](gallery/{p.name})" in md for p in pictures)


def test_titles_scale_with_the_panel_and_fit_it():
    # Issue 27: ~12 px titles on 2700 px panels, and long titles running into the next panel.
    from resnext_det.evaluation.gallery import join_panels, titled

    def title_height(panel_width: int, title: str = "X-50 32x4d") -> tuple[int, np.ndarray]:
        out = titled(np.zeros((50, panel_width, 3), np.uint8), title)
        bar = out[: out.shape[0] - 50]
        rows = np.flatnonzero((bar < 128).any(axis=(1, 2)))
        return rows[-1] - rows[0] + 1, bar

    small, _ = title_height(400)
    large, _ = title_height(2700)
    assert small >= 10 and large >= 4 * small  # about 1/40 of the width
    _, bar = title_height(200, "a model with a name far longer than its panel is wide")
    inked = np.flatnonzero((bar < 128).any(axis=(0, 2)))
    assert inked[-1] < 200 - 4  # shortened with "...", a margin kept
    two_lines = titled(np.zeros((50, 400, 3), np.uint8), "name\nrun 0: 1 TP")
    assert two_lines.shape[0] - 50 > title_height(400)[1].shape[0] + small  # a line each
    joined = join_panels([np.zeros((10, 300, 3), np.uint8), np.zeros((20, 300, 3), np.uint8)])
    assert joined.shape == (22, 2 * 302 + 8, 3)
    assert (joined[:, 302:310] == 255).all()  # the gap
    assert (joined[0, :302] == 150).all()  # the border


def test_labels_that_would_overlap_are_left_out_and_every_box_is_drawn():
    # Issue 27: neighbouring score labels were printed over each other.
    from detectron2.utils.visualizer import Visualizer

    from resnext_det.evaluation.gallery import drop_overlapping_labels

    boxes = np.array([[10, 10, 120, 120], [12, 11, 118, 119], [150, 150, 250, 250]], float)
    vis = Visualizer(np.zeros((256, 256, 3), np.uint8), None).overlay_instances(
        boxes=boxes, labels=["cat 0.90", "cat 0.89", "dog 0.70"]
    )
    assert len(vis.ax.texts) == 3
    assert drop_overlapping_labels(vis) == 1
    shown = sorted(t.get_text() for t in vis.ax.texts)
    assert shown in (["cat 0.90", "dog 0.70"], ["cat 0.89", "dog 0.70"])
    renderer = vis.fig.canvas.get_renderer()
    a, b = (t.get_window_extent(renderer) for t in vis.ax.texts)
    assert not a.overlaps(b)


def test_a_repeated_input_flag_adds_its_images():
    """``--input a.jpg --input b.jpg`` draws both (argparse kept only the last)."""
    from resnext_det.commands.predict import argument_parser

    args = argument_parser().parse_args(["--input", "a.jpg", "--input", "b.jpg", "c/"])
    assert args.input == ["a.jpg", "b.jpg", "c/"]

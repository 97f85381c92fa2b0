"""The comparison: report files, models mode on tiny CPU detectors, the tool, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_cfg
from PIL import Image
from support.synthetic_results import synthetic_detections, synthetic_ground_truth
from test_evaluation import coco_eval

from resnext_det.evaluation import (
    OUTPUT_FILES,
    ResultsFormatError,
    compare_models,
    compare_results,
    evaluate_results,
)
from resnext_det.evaluation.coco import METRIC_KEYS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    gt = synthetic_ground_truth(40, seed=21)
    files = {"gt": d / "gt.json"}
    files["gt"].write_text(json.dumps(gt))
    for name, seed, q in (("R-50", 22, 0.45), ("X-50-32x4d", 23, 0.85)):
        files[name] = d / f"{name}.json"
        files[name].write_text(json.dumps(synthetic_detections(gt, seed=seed, quality=q)))
    return gt, files


def test_report_files_and_figures(data, tmp_path):
    gt, f = data
    out = tmp_path / "out"
    report = compare_results(
        f["gt"],
        {"R-50": f["R-50"], "X-50-32x4d": f["X-50-32x4d"]},
        bootstrap=200,
        seed=1,
        out_dir=out,
        progress=False,
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    on_disk = json.loads((out / "comparison.json").read_text())
    assert on_disk["baseline"] == "R-50"
    for name in ("R-50", "X-50-32x4d"):
        m = on_disk["models"][name]
        e = coco_eval(gt, json.loads(f[name].read_text()))
        for i, key in enumerate(METRIC_KEYS):  # every figure in the json equals COCOeval's
            assert m[key] == pytest.approx(100 * e.stats[i], abs=1e-6), (name, key)
        p = e.eval["precision"]
        for k, cat in enumerate(gt["categories"]):
            pk = p[:, :, k, 0, -1]
            ref = 100 * pk[pk > -1].mean() if (pk > -1).any() else None
            got = m["per_category_AP"][cat["name"]]
            assert (got is None) if ref is None else got == pytest.approx(ref, abs=1e-6)
        assert (
            set(m["ci"]) == {"AP", "AP50", "AP75"} and m["ci"]["AP"][0] < m["AP"] < m["ci"]["AP"][1]
        )
    x, r = on_disk["models"]["X-50-32x4d"], on_disk["models"]["R-50"]
    assert x["delta"]["AP"] == pytest.approx(x["AP"] - r["AP"])
    assert x["delta_ci"]["AP"][0] > 0 and x["delta_significant"]["AP50"] is True
    assert r["delta"]["AP"] == 0 and r["delta_ci"]["AP"] == [0.0, 0.0]
    for key in (*METRIC_KEYS, "delta", "ci", "delta_ci"):  # the file holds what was returned
        assert on_disk["models"]["X-50-32x4d"][key] == report["models"]["X-50-32x4d"][key]
    with open(out / "comparison.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["model"] for row in rows] == ["R-50", "X-50-32x4d"]
    assert float(rows[1]["AP50"]) == pytest.approx(x["AP50"])
    assert float(rows[1]["delta_AP_ci_low"]) == pytest.approx(x["delta_ci"]["AP"][0])
    md = (out / "comparison.md").read_text()
    assert "| X-50-32x4d" in md and "ΔAP@0.5" in md and "95% paired bootstrap" in md
    with Image.open(out / "comparison.png") as im:
        im.verify()
    with Image.open(out / "comparison.png") as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 300
        assert np.asarray(im.convert("L")).std() > 5  # something is drawn


def _tool():
    """tools/compare_backbones.py as a module, so its main() runs in this process (a fresh
    interpreter costs ~10 s of imports; test_tool_runs_as_a_script covers that path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_backbones", REPO / "tools" / "compare_backbones.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tool_args(f, out):
    return [
        "--gt",
        str(f["gt"]),
        "--results",
        f"R-50={f['R-50']}",
        "--results",
        f"X-50-32x4d={f['X-50-32x4d']}",
        "--bootstrap",
        "200",
        "--out",
        str(out),
        "--no-progress",
    ]


def test_results_mode_tool(data, tmp_path, capsys):
    _, f = data
    out = tmp_path / "tool"
    tool = _tool()
    assert tool.main(_tool_args(f, out)) == 0
    printed = capsys.readouterr().out
    assert "X-50-32x4d" in printed and "AP@0.5" in printed and "ΔAP" in printed
    assert (out / "comparison.json").is_file()
    bad = [
        "--gt",
        str(f["gt"]),
        "--results",
        f"R-50={tmp_path / 'missing.json'}",
        "--out",
        str(tmp_path / "bad"),
    ]
    assert tool.main(bad) == 2
    err = capsys.readouterr().err
    assert "missing.json' does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        tool.main(["--gt", str(f["gt"])])  # neither --results nor --model: argparse error


@pytest.mark.slow
def test_tool_runs_as_a_script(data, tmp_path):
    _, f = data
    cmd = [
        sys.executable,
        str(REPO / "tools" / "compare_backbones.py"),
        *_tool_args(f, tmp_path / "o"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "X-50-32x4d" in run.stdout and (tmp_path / "o" / "comparison.png").is_file()


def _bad(gt, kind):
    res = synthetic_detections(gt, seed=5)
    if kind == "image":
        res[7]["image_id"] = 123456789
    elif kind == "category":
        res[7]["category_id"] = 4  # 4 is in COCO's gaps, not in this ground truth
    elif kind == "negative":
        res[7]["bbox"][3] = -1.0
    elif kind == "missing-key":
        del res[7]["bbox"]
    elif kind == "not-a-list":
        res = {"annotations": res}
    return res


@pytest.mark.parametrize(
    "kind,match",
    [
        ("image", r"bad\.json: entry 7: 'image_id' 123456789 is not an image"),
        ("category", r"bad\.json: entry 7: 'category_id' 4 is not a category"),
        ("negative", r"bad\.json: entry 7: 'bbox' .* negative width or height"),
        ("missing-key", r"bad\.json: entry 7 has no 'bbox'"),
        ("not-a-list", r"bad\.json: COCO results must be a JSON list"),
    ],
)
def test_errors_leave_nothing_behind(data, tmp_path, kind, match):
    gt, f = data
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_bad(gt, kind)))
    out = tmp_path / "out"
    with pytest.raises(ResultsFormatError, match=match):
        compare_results(
            f["gt"], {"R-50": f["R-50"], "bad": bad}, bootstrap=10, out_dir=out, progress=False
        )
    assert not out.exists() or not any(out.iterdir())


def test_missing_file_and_different_image_sets(data, tmp_path):
    gt, f = data
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"nope\.json' does not exist"):
        compare_results(f["gt"], {"a": f["R-50"], "b": tmp_path / "nope.json"}, out_dir=out)
    full = json.loads(f["R-50"].read_text())
    half_ids = {im["id"] for im in gt["images"][:20]}
    half = tmp_path / "half.json"
    half.write_text(json.dumps([d for d in full if d["image_id"] in half_ids]))
    with pytest.raises(
        ResultsFormatError,
        match=r"cover different image sets: .*R-50\.json has "
        r"detections on 40 images, .*half\.json on 20",
    ):
        compare_results(f["gt"], {"a": f["R-50"], "b": half}, out_dir=out, progress=False)
    assert not out.exists() or not any(out.iterdir())
    ok = compare_results(
        f["gt"], {"a": f["R-50"], "b": half}, bootstrap=0, allow_missing_images=True, progress=False
    )
    assert ok["models"]["b"]["AP"] < ok["models"]["a"]["AP"]


def test_empty_results_file_gives_zero(data, tmp_path):
    _, f = data
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    report = compare_results(
        f["gt"],
        {"R-50": f["R-50"], "empty": empty},
        bootstrap=20,
        allow_missing_images=True,
        out_dir=tmp_path / "o",
        progress=False,
    )
    m = report["models"]["empty"]
    assert (
        m["AP"] == 0.0 and m["AP50"] == 0.0 and m["delta"]["AP"] == -report["models"]["R-50"]["AP"]
    )
    assert (tmp_path / "o" / "comparison.png").is_file()


# ------------------------------------------------------------------------------------------
# Models mode
# ------------------------------------------------------------------------------------------


def _write_dataset(root):
    """Four small images with bright rectangles, and their COCO json (category ids 1 and 3)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    images, anns = [], []
    for i in range(4):
        h, w = 64, 80
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        for _ in range(2):
            x0, y0 = int(rng.integers(0, 50)), int(rng.integers(0, 34))
            bw, bh = int(rng.integers(10, 30)), int(rng.integers(10, 30))
            img[y0 : y0 + bh, x0 : x0 + bw] = 220
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": [1, 3][_],
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        Image.fromarray(img).save(root / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": h, "width": w})
    cats = [{"id": 1, "name": "box"}, {"id": 3, "name": "bar"}]
    (root / "gt.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return root / "gt.json", root / "images"


def _tiny_model(root, name, groups, width, seed):
    from detectron2.modeling import build_model

    cfg = tiny_cfg(NUM_GROUPS=groups, WIDTH_PER_GROUP=width)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep detections to evaluate
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(seed)
    model = build_model(cfg)
    weights = root / f"{name}.pth"
    torch.save({"model": model.state_dict()}, weights)  # a detectron2 checkpoint
    yaml = root / f"{name}.yaml"
    yaml.write_text(cfg.dump())
    return yaml, weights


def test_models_mode_two_tiny_detectors(tmp_path):
    json_file, image_root = _write_dataset(tmp_path)
    models = {
        "R-tiny": _tiny_model(tmp_path, "r", 1, 8, 0),
        "X-tiny": _tiny_model(tmp_path, "x", 2, 4, 1),
    }
    out = tmp_path / "out"
    report = compare_models(models, (json_file, image_root), out, bootstrap=20, progress=False)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([*OUTPUT_FILES, "results_R-tiny.json", "results_X-tiny.json"])
    for name in models:
        m = report["models"][name]
        assert m["backbone_params"] > 0 and m["backbone_gflops"] > 0
        assert m["flops_input_size"] == [64, 96]  # test size, rounded up to FPN's 32
        assert m["seconds_per_image"] > 0 and m["timed_images"] == 2  # 4 images, 2 warm-up
        results = json.loads((out / f"results_{name}.json").read_text())
        assert results and {r["category_id"] for r in results} <= {1, 3}
        # The saved results reproduce the report's numbers.
        again = evaluate_results(json_file, results)
        assert all(again[k] == pytest.approx(m[k], nan_ok=True) for k in METRIC_KEYS)
    assert (
        report["models"]["R-tiny"]["backbone_params"]
        != report["models"]["X-tiny"]["backbone_params"]
    )
    assert report["baseline"] == "R-tiny"


def test_models_mode_tool_and_bad_weights(tmp_path):
    json_file, image_root = _write_dataset(tmp_path)
    r_yaml, r_w = _tiny_model(tmp_path, "r", 1, 8, 0)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"weights file .*missing\.pth' does not exist"):
        compare_models(
            {"a": (r_yaml, r_w), "b": (r_yaml, tmp_path / "missing.pth")},
            (json_file, image_root),
            out,
            bootstrap=0,
            progress=False,
        )
    assert not out.exists() or not any(out.iterdir())
    args = [
        "--model",
        f"R={r_yaml}:{r_w}",
        "--model",
        f"R2={r_yaml}:{r_w}",
        "--coco-json",
        str(json_file),
        "--image-root",
        str(image_root),
        "--max-images",
        "3",
        "--bootstrap",
        "200",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert _tool().main(args) == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["num_images"] == 3
    # The same weights twice: identical detections, so a delta of exactly 0 with a 0-width CI.
    assert report["models"]["R2"]["delta"]["AP"] == 0
    assert report["models"]["R2"]["delta_ci"]["AP"] == [0.0, 0.0]

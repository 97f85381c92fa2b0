"""The comparison: report files, models mode on tiny CPU detectors, the tool, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
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
    PartialWeightsError,
    ResultsFormatError,
    compare_models,
    compare_results,
    evaluate_results,
)
from resnext_det.evaluation.coco import METRIC_KEYS
from resnext_det.evaluation.records import render_csv


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


def test_csv_cells_that_read_as_formulas_are_text(data):
    """Model names come from the user's command line: a spreadsheet must not run one."""
    _, f = data
    names = ['=HYPERLINK("http://x")', "-2+3"]
    report = compare_results(
        f["gt"], dict(zip(names, (f["X-50-32x4d"], f["R-50"]))), bootstrap=50, progress=False
    )
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert [r["model"] for r in rows] == ["'" + n for n in names]
    delta = report["models"][names[1]]["delta"]["AP"]
    assert delta < 0 and float(rows[1]["delta_AP"]) == pytest.approx(delta)  # numbers stay so


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
    # What ms/img depends on is recorded with it (issue 27): threads and the machine's load.
    on_disk = json.loads((out / "comparison.json").read_text())["models"]["X-tiny"]
    assert on_disk["torch_threads"] == torch.get_num_threads()
    assert on_disk["cpu_count"] == os.cpu_count()
    assert on_disk["load_average_before"] >= 0 and on_disk["load_average_after"] >= 0
    assert (
        f"{torch.get_num_threads()} torch threads, load average"
        in (out / "comparison.md").read_text()
    )


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


# ------------------------------------------------------------------------------------------
# Several training runs per model (issue 14)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """3 runs of a weak and 4 of a strong detector (qualities differ per run), as files."""
    d = tmp_path_factory.mktemp("runs")
    gt = synthetic_ground_truth(40, seed=31)
    files = {"gt": d / "gt.json"}
    files["gt"].write_text(json.dumps(gt))
    for name, qualities in (("R", (0.40, 0.43, 0.46)), ("X", (0.80, 0.82, 0.84, 0.86))):
        files[name] = []
        for i, q in enumerate(qualities):
            f = d / f"{name}_s{i}.json"
            f.write_text(
                json.dumps(synthetic_detections(gt, seed=40 + 7 * i + len(name), quality=q))
            )
            files[name].append(f)
    return gt, files


def test_runs_per_model_figures_and_json(runs, tmp_path):
    gt, f = runs
    out = tmp_path / "out"
    report = compare_results(
        f["gt"], {"R": f["R"], "X": f["X"]}, bootstrap=200, out_dir=out, progress=False
    )
    on_disk = json.loads((out / "comparison.json").read_text())
    for name, n in (("R", 3), ("X", 4)):  # unequal run counts
        m = on_disk["models"][name]
        assert m["runs"] == n and len(m["per_run"]) == n
        per_run_ap = []
        for run, path in zip(m["per_run"], f[name]):
            e = coco_eval(gt, json.loads(path.read_text()))
            assert run["AP"] == pytest.approx(100 * e.stats[0], abs=1e-6)  # each run's figure
            assert run["results_file"] == str(path)
            per_run_ap.append(run["AP"])
        assert m["AP"] == pytest.approx(np.mean(per_run_ap)) == m["mean"]["AP"]
        assert m["between_run_sd"]["AP"] == pytest.approx(np.std(per_run_ap, ddof=1))
        assert m["ci"]["AP"][0] < m["AP"] < m["ci"]["AP"][1]
        # The run term only widens: the interval over images and runs holds the images-only one.
        assert (
            m["ci"]["AP"][0] <= m["ci_image"]["AP"][0]
            and m["ci"]["AP"][1] >= m["ci_image"]["AP"][1]
        )
    x = on_disk["models"]["X"]
    assert x["delta"]["AP"] == pytest.approx(x["AP"] - on_disk["models"]["R"]["AP"])
    assert x["delta_calibrated"] is True
    assert x["delta_covers"] == "40 test images and 4 vs 3 training runs"
    assert x["delta_ci"]["AP"][0] > 0 and x["delta_significant"]["AP"] is True
    width = x["delta_ci"]["AP"][1] - x["delta_ci"]["AP"][0]
    width_img = x["delta_ci_image"]["AP"][1] - x["delta_ci_image"]["AP"][0]
    assert width > width_img  # runs that differ this much must widen the interval
    assert report["bootstrap"]["calibrated"] is True
    md = (out / "comparison.md").read_text()
    assert "covers 40 test images and 4 vs 3 training runs" in md
    assert "Student-t term for the between-run variance" in md and "## Training runs" in md
    assert "†" not in md  # every Δ is calibrated: no images-only mark, no images-only legend
    row = next(line for line in md.splitlines() if line.startswith("| X "))
    assert "*" in row and "†" not in row
    with open(out / "comparison.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert rows["R"]["runs"] == "3" and rows["X"]["delta_calibrated"] == "1"


def test_one_run_per_model_is_labelled_images_only(data, tmp_path):
    _, f = data
    out = tmp_path / "out"
    compare_results(
        f["gt"],
        {"R-50": f["R-50"], "X-50-32x4d": [f["X-50-32x4d"]]},  # a list of one run works too
        bootstrap=200,
        out_dir=out,
        progress=False,
    )
    x = json.loads((out / "comparison.json").read_text())["models"]["X-50-32x4d"]
    assert x["runs"] == 1 and x["delta_significant"]["AP50"] is True
    assert x["delta_calibrated"] is False
    assert x["delta_covers"] == (
        "40 test images only (1 vs 1 training run: run-to-run variation unmeasured)"
    )
    assert x["between_run_sd"]["AP"] is None and x["ci"] == x["ci_image"]
    md = (out / "comparison.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| X-50-32x4d"))
    assert "†" in row and "*" not in row  # an images-only exclusion is not marked as a finding
    assert "run-to-run variation unmeasured" in md and "test images only" in md
    # The console's table explains its † too (issue 27).
    from resnext_det.evaluation.report import format_table

    console = format_table(json.loads((out / "comparison.json").read_text()))
    assert "\n† marks a Δ whose interval excludes 0 over test images only" in console


def test_a_loaded_machine_is_said_with_the_timing():
    from resnext_det.evaluation.report import timing_note

    model = {"seconds_per_image": 0.5, "device": "cpu", "torch_threads": 2, "cpu_count": 2}
    idle = {"m": {**model, "load_average_before": 0.1, "load_average_after": 0.9}}
    busy = {"m": {**model, "load_average_before": 3.5, "load_average_after": 4.0}}
    assert timing_note({"models": idle}) == (
        "ms/img: on cpu, 2 torch threads, load average 0.10-0.90 on 2 CPUs."
    )
    assert "The machine was loaded (load average 3.50 before timing, on 2 CPUs)" in timing_note(
        {"models": busy}
    )
    assert timing_note({"models": {"m": {"seconds_per_image": None}}}) == ""


def test_repeated_names_in_results_mode_are_runs(runs, tmp_path, capsys):
    _, f = runs
    out = tmp_path / "tool"
    args = ["--gt", str(f["gt"])]
    for name in ("R", "X"):
        for path in f[name]:
            args += ["--results", f"{name}={path}"]
    assert _tool().main([*args, "--bootstrap", "200", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["models"]["R"]["runs"] == 3 and report["models"]["X"]["runs"] == 4
    files = [r["results_file"] for r in report["models"]["R"]["per_run"]]
    assert files == [str(p) for p in f["R"]]  # none dropped, in the order given
    assert "covers 40 test images and 4 vs 3 training runs" in (out / "comparison.md").read_text()
    capsys.readouterr()


def test_runs_are_drawn_as_points(runs, tmp_path):
    """comparison.png shows each run as a dot beside its bar: the image differs from one whose
    runs are all equal to their mean (same bars, no dots)."""
    from resnext_det.evaluation.report import render_png

    _, f = runs
    report = compare_results(f["gt"], {"R": f["R"], "X": f["X"]}, bootstrap=0, progress=False)
    render_png(report, tmp_path / "with.png")
    for m in report["models"].values():
        m["per_run"] = [dict(r, AP=m["AP"], AP50=m["AP50"], AP75=m["AP75"]) for r in m["per_run"]]
        for r in m["per_run"]:
            for k in ("APs", "APm", "APl"):
                r[k] = None
    render_png(report, tmp_path / "without.png")
    a = np.asarray(Image.open(tmp_path / "with.png").convert("L"), dtype=float)
    b = np.asarray(Image.open(tmp_path / "without.png").convert("L"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).sum() > 0


def test_partial_run_refused_and_missing_detections_scored(data, tmp_path):
    """detectron2 writes no entry for an image without detections: such files compare without a
    flag, scored as pycocotools scores them; a file covering at most half the images does not."""
    gt, f = data
    full = json.loads(f["R-50"].read_text())
    drop = {im["id"] for im in gt["images"][:3]}
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps([d for d in full if d["image_id"] not in drop]))
    report = compare_results(f["gt"], {"a": f["R-50"], "b": fewer}, bootstrap=0, progress=False)
    e = coco_eval(gt, json.loads(fewer.read_text()))
    assert report["models"]["b"]["AP"] == pytest.approx(100 * e.stats[0], abs=1e-6)
    half_ids = {im["id"] for im in gt["images"][:15]}
    part = tmp_path / "part.json"
    part.write_text(json.dumps([d for d in full if d["image_id"] in half_ids]))
    with pytest.raises(
        ResultsFormatError, match=r"part\.json on 15 .*partial run.*allow_missing_images=True"
    ):
        compare_results(f["gt"], {"a": f["R-50"], "b": [fewer, part]}, bootstrap=0, progress=False)
    # Alone, against the ground truth's image count.
    with pytest.raises(
        ResultsFormatError, match=r"ground truth .* has 40 images, .*part\.json on 15"
    ):
        compare_results(f["gt"], {"b": part}, bootstrap=0, progress=False)
    tool = _tool()
    args = ["--gt", str(f["gt"]), "--results", f"a={f['R-50']}", "--results", f"b={part}"]
    assert tool.main([*args, "--bootstrap", "0", "--no-progress"]) == 2
    assert tool.main([*args, "--bootstrap", "0", "--no-progress", "--allow-missing-images"]) == 0


def test_bootstrap_minimum_and_bad_out(data, tmp_path, capsys):
    _, f = data
    tool = _tool()
    base = ["--gt", str(f["gt"]), "--results", f"R-50={f['R-50']}", "--no-progress"]
    with pytest.raises(SystemExit):
        tool.main([*base, "--bootstrap", "1"])
    assert "at least 200" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert tool.main([*base, "--bootstrap", "0", "--out", str(a_file)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert tool.main([*base, "--bootstrap", "0", "--out", str(a_file / "sub")]) == 2
    assert "is a file, so no folder can be made under it" in capsys.readouterr().err
    with pytest.raises(NotADirectoryError, match=r"a_file' is an existing file"):  # the API too
        compare_results(f["gt"], {"R-50": f["R-50"]}, bootstrap=0, out_dir=a_file, progress=False)
    assert a_file.read_text() == "x"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert tool.main([*base, "--bootstrap", "0", "--out", str(ro)]) == 2
            assert "not writable" in capsys.readouterr().err
            assert tool.main([*base, "--bootstrap", "0", "--out", str(ro / "a" / "b")]) == 2
            assert "which is not writable" in capsys.readouterr().err
        finally:
            ro.chmod(0o700)


def test_models_mode_runs_and_partial_weights(tmp_path):
    """Repeated --model names are runs; a backbone-only checkpoint and heads of another shape are
    refused naming the groups, unless --allow-partial-weights."""
    from detectron2.modeling import build_model

    json_file, image_root = _write_dataset(tmp_path)
    r0 = _tiny_model(tmp_path, "r0", 1, 8, 0)
    r1 = _tiny_model(tmp_path, "r1", 1, 8, 1)
    x0 = _tiny_model(tmp_path, "x0", 2, 4, 2)
    out = tmp_path / "out"
    common = ["--coco-json", str(json_file), "--image-root", str(image_root), "--no-progress"]
    args = [f"R={r0[0]}:{r0[1]}", f"R={r1[0]}:{r1[1]}", f"X={x0[0]}:{x0[1]}"]
    argv = [*(a for m in args for a in ("--model", m)), *common, "--bootstrap", "200"]
    assert _tool().main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["models"]["R"]["runs"] == 2 and report["models"]["X"]["runs"] == 1
    assert (out / "results_R_run0.json").is_file() and (out / "results_R_run1.json").is_file()
    assert (out / "results_X.json").is_file()
    assert [i["weights"] for i in report["models"]["R"]["per_run_info"]] == [str(r0[1]), str(r1[1])]
    assert report["models"]["X"]["delta_calibrated"] is False
    md = (out / "comparison.md").read_text()
    # Each run is named by the results file it wrote; the images are at hand, so a gallery.
    assert str(out / "results_R_run1.json") in md and "<results of" not in md
    assert "## Gallery: where X and R differ most" in md and report["gallery"][0]["model"] == "X"

    # A backbone-only checkpoint: the heads would stay random.
    full = torch.load(x0[1], weights_only=True)["model"]
    backbone = tmp_path / "backbone_only.pth"
    torch.save({"model": {k: v for k, v in full.items() if k.startswith("backbone.")}}, backbone)
    with pytest.raises(PartialWeightsError, match=r"roi_heads\.box_predictor\.\*: missing") as exc:
        compare_models(
            {"X": (x0[0], backbone)}, (json_file, image_root), None, bootstrap=0, progress=False
        )
    assert "proposal_generator.rpn_head.*: missing" in str(exc.value)
    assert "backbone_only.pth" in str(exc.value) and "allow_partial_weights=True" in str(exc.value)
    # Heads of another shape (3 classes instead of 2).
    cfg = tiny_cfg(NUM_GROUPS=2, WIDTH_PER_GROUP=4)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    other = tmp_path / "three_classes.pth"
    torch.save({"model": build_model(cfg).state_dict()}, other)
    with pytest.raises(PartialWeightsError, match=r"roi_heads\.box_predictor\.\*: shape mismatch"):
        compare_models(
            {"X": (x0[0], other)}, (json_file, image_root), None, bootstrap=0, progress=False
        )
    bad = ["--model", f"X={x0[0]}:{backbone}", *common, "--bootstrap", "0"]
    assert _tool().main(bad) == 2
    assert _tool().main([*bad, "--allow-partial-weights"]) == 0


def test_the_same_run_given_twice_is_refused_by_content(runs, tmp_path):
    # Issue 27: a copy of a results file (another name, same content) is not a second run.
    _, f = runs
    copy = tmp_path / "copy_of_R_s0.json"
    copy.write_bytes(f["R"][0].read_bytes())
    args = ["--gt", str(f["gt"]), "--results", f"R={f['R'][0]}", "--results", f"R={copy}"]
    args += ["--results", f"X={f['X'][0]}", "--results", f"X={f['X'][1]}"]
    out = tmp_path / "out"
    assert _tool().main([*args, "--bootstrap", "0", "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    # The same detections in another order are the same results.
    shuffled = json.loads(f["R"][1].read_text())[::-1]
    with pytest.raises(ValueError, match=r"model 'R': runs 0 and 1 are identical results"):
        compare_results(f["gt"], {"R": [f["R"][1], shuffled], "X": f["X"][:2]}, bootstrap=0)


def test_the_same_weights_given_twice_are_refused_before_inference(tmp_path):
    json_file, image_root = _write_dataset(tmp_path)
    config, weights = _tiny_model(tmp_path, "r", 1, 8, 0)
    copy = tmp_path / "copy.pth"
    copy.write_bytes(weights.read_bytes())
    models = {"R": [(config, weights), (config, copy)], "X": _tiny_model(tmp_path, "x", 2, 4, 1)}
    with pytest.raises(ValueError, match=r"model 'R': runs 0 and 1 are the same weights"):
        compare_models(models, (json_file, image_root), None, bootstrap=20, progress=False)


def test_an_empty_metric_says_n_a_in_the_figure(runs, tmp_path, monkeypatch):
    # Issue 27: APs of a set with no small objects was a blank place in comparison.png.
    import matplotlib.axes

    from resnext_det.evaluation.report import render_png

    _, f = runs
    report = compare_results(f["gt"], {"R": f["R"][:1], "X": f["X"][:1]}, bootstrap=0)
    for m in report["models"].values():
        m["APs"] = None
    said = []
    real = matplotlib.axes.Axes.text
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "text",
        lambda ax, x, y, s, *a, **k: said.append(s) or real(ax, x, y, s, *a, **k),
    )
    render_png(report, tmp_path / "c.png")
    assert said.count("n/a") == 2  # one per model

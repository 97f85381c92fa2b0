"""Issue 26: nothing a user gives can destroy their data or escape their folders; an interrupted
sweep stops; every error is one line. One test (or more) per item of the issue, named after it;
each fails on the code before the fix. The process-level seed-run tests are in
tests/test_seed_run_signals.py (slow: they spawn workers)."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import struct
import threading
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from conftest import REPO
from detectron2.modeling import build_model

from resnext_det.config import load_config
from resnext_det.errors import BadFileError, ConfigError
from resnext_det.io import OutputLocationError, check_output_location, file_name_for, path_inside

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
LAZY = REPO / "configs" / "lazy" / "faster_rcnn_X_50_32x4d_FPN_1x.py"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=2, num_val=3, image_size=64, seed=0
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "whole.pth"
    torch.save({"model": build_model(load_config(TINY)).state_dict()}, path)
    return path


def predict(*argv) -> int:
    from resnext_det.commands.predict import main

    return main(["--no-progress", *map(str, argv)])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds one compressed row: a
    few hundred bytes that a decoder without a pixel limit would grow to width*height*3."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Item 1: predict overwrote the user's images (--output the input folder; --output an input file)


def test_item1_predict_output_that_is_holds_or_lies_inside_the_inputs_is_refused(
    tmp_path, synthetic, weights, capsys
):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(synthetic.val_image_root.glob("*.png")):
        (images / p.name).write_bytes(p.read_bytes())
    before = snapshot(tmp_path)
    one = sorted(images.glob("*.png"))[0]
    for output, how in [
        (images, "is the input"),  # every picture would replace its image
        (tmp_path, "contains the input"),
        (images / "pred", "lies inside the input folder"),
        (one, "is the input"),  # was a FileExistsError traceback
        (images / ".." / "images", "is the input"),
    ]:
        code = predict("--config-file", TINY, "--input", images, "--output", output,
                       "--opts", "MODEL.WEIGHTS", weights)  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, (output, err)
        assert err.startswith("predict: error: --output") and how in err, err
        assert err.count("\n") == 1
    assert snapshot(tmp_path) == before  # every image as it was, nothing written


def test_item1_predict_beside_the_inputs_writes_and_never_reuses_a_picture_name(
    tmp_path, synthetic, weights
):
    from resnext_det.predict import _unique_names

    src = sorted(synthetic.val_image_root.glob("*.png"))[0]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("x.png", "x.jpg", "x_2.png"):  # x_2.png used to be written twice
        (images / name).write_bytes(src.read_bytes())
    # Each picture keeps its input's format (issue 27): x.jpg's picture is x.jpg.
    assert _unique_names(sorted(images.iterdir())) == ["x.jpg", "x.png", "x_2.png"]
    assert _unique_names([images / "x.png", images / "a" / "x.png", images / "x_2.png"]) == [
        "x.png", "x_2.png", "x_2_2.png"
    ]  # fmt: skip
    out = tmp_path / "out"
    assert predict("--config-file", TINY, "--input", images, "--output", out,
                   "--opts", "MODEL.WEIGHTS", weights) == 0  # fmt: skip
    pictures = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".jpg"))
    assert pictures == ["x.jpg", "x.png", "x_2.png"]
    assert {img["file_name"] for img in json.loads((out / "images.json").read_text())["images"]} \
        == {str((images / n).resolve()) for n in ("x.png", "x.jpg", "x_2.png")}  # fmt: skip


def test_item1_the_guard_resolves_links_and_hard_links(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"a")
    os.symlink(data, tmp_path / "link")
    os.link(data / "a.png", tmp_path / "hard.png")
    for out in (tmp_path / "link", tmp_path / "hard.png", tmp_path / "link" / "sub"):
        with pytest.raises(OutputLocationError, match="--out"):
            check_output_location(out, [data / "a.png", data], what="--out")
    assert check_output_location(tmp_path / "elsewhere", [data]) == tmp_path / "elsewhere"


# ---------------------------------------------------------------------------------------------
# Item 3: predict --compare "../../ESCAPED=CFG:W" wrote to OUT/../../ESCAPED/; absolute names too


def test_item3_compare_names_never_write_outside_the_output_folder(tmp_path, synthetic, weights):
    out = tmp_path / "deep" / "er" / "out"
    image = sorted(synthetic.val_image_root.glob("*.png"))[0]
    absolute = str(tmp_path / "ABS")
    code = predict("--input", image, "--output", out, "--compare",
                   f"../../ESCAPED={TINY}:{weights}", f"{absolute}={TINY}:{weights}")  # fmt: skip
    assert code == 0
    assert not (tmp_path / "deep" / "ESCAPED").exists() and not Path(absolute).exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(
        [file_name_for("../../ESCAPED"), file_name_for(absolute)]
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(out) or p == weights for p in written), written


def test_item3_path_inside_refuses_what_leaves_the_folder(tmp_path):
    assert path_inside(tmp_path, "a/b.json") == tmp_path / "a" / "b.json"
    os.symlink("/", tmp_path / "root")
    for bad in ("../x", "/etc/passwd", "a/../../x", "", ".", "root/etc/x"):
        with pytest.raises(OutputLocationError, match="outside"):
            path_inside(tmp_path, bad)


# ---------------------------------------------------------------------------------------------
# Item 4: compare --model "a/b=..." --model "a_b=..." shared results_a_b.json


def test_item4_two_model_names_never_share_a_file():
    from resnext_det.evaluation.inference import _file_name, _file_names

    assert _file_name("a/b") != _file_name("a_b")
    assert _file_name("a/b", 1) != _file_name("a_b", 1)
    names = _file_names({"a/b": [("c", "w")], "a_b": [("c", "w")], "X": [("c", "w")] * 2})
    assert len(set(names.values())) == 3 + 1
    with pytest.raises(ValueError, match="'R_run1' .*'R'|'R' .*'R_run1'"):
        _file_names({"R": [("c", "w")] * 2, "R_run1": [("c", "w")]})


NAMES = ["a/b", "a_b", "a%2Fb", "..", ".", ".hidden", "/abs/x", "a\\b", "x" * 300,
         "x" * 299 + "y", "名前", "a b", "\n## h", "-r"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_item4_file_name_for_is_one_plain_visible_component(name):
    fname = file_name_for(name)
    assert "/" not in fname and "\\" not in fname and fname not in ("", ".", "..")
    assert not fname.startswith(".") and len(fname.encode()) <= 200
    assert fname.isascii() and fname.isprintable()


def test_item4_file_name_for_is_injective():
    names = ["a/b", "a_b", "a%2Fb", "a%b", "..", "%2E.", ".", "a b", "a_b ", "x" * 300,
             "x" * 299 + "y", "/abs/x", "%2Fabs%2Fx", "名前", "-", "_", "%"]  # fmt: skip
    assert len({file_name_for(n) for n in names}) == len(names)


# ---------------------------------------------------------------------------------------------
# Item 5: decompression bombs (predict; the comparison gallery; data checks)


def test_item5_predict_refuses_an_image_declaring_too_many_pixels_before_decoding(
    tmp_path, weights, capsys
):
    bomb = tmp_path / "in" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_header(12000, 12000))  # PIL only warns at this size; cv2 has no limit
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning the command lets through is recorded
        assert predict("--config-file", TINY, "--input", bomb, "--output", tmp_path / "out",
                       "--opts", "MODEL.WEIGHTS", weights) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "bomb.png" in err and "12000x12000" in err and "pixels" in err
    # the one line says it all: not PIL's "decompression bomb DOS attack" warning before it
    assert not [w for w in seen if "decompression bomb" in str(w.message)], seen


def test_item5_the_gallery_and_the_data_checks_refuse_it_too(tmp_path):
    from resnext_det.data.images import ImageCheckError, decode_image, read_image
    from resnext_det.evaluation import compare_results

    bomb = tmp_path / "img" / "1.png"
    bomb.parent.mkdir()
    bomb.write_bytes(png_header(20000, 20000))
    for read in (read_image, decode_image):
        with pytest.raises(ImageCheckError, match="400,?000,?000 pixels.*decompression bomb"):
            read(bomb)
    gt = {"images": [{"id": 1, "file_name": "1.png", "width": 20000, "height": 20000}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9],
                           "area": 81, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "a"}]}  # fmt: skip
    hit = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 0.9}]
    with pytest.raises(BadFileError, match="gallery: image id 1: .*400,?000,?000 pixels"):
        compare_results(gt, {"R": [], "X": hit}, bootstrap=0, out_dir=tmp_path / "cmp",
                        allow_missing_images=True,
                        images=bomb.parent, progress=False)  # fmt: skip
    assert not (tmp_path / "cmp").exists() or not any((tmp_path / "cmp").iterdir())


# ---------------------------------------------------------------------------------------------
# Item 6: LazyConfig overrides that name no key were accepted


def test_item6_lazy_override_of_a_missing_key_is_refused_naming_the_nearest():
    from resnext_det.lazy import load_lazy_config

    with pytest.raises(ConfigError, match=r"no key 'train.max_iterr'; did you mean train.max_iter"):
        load_lazy_config(LAZY, ["train.max_iterr=2"])
    with pytest.raises(ConfigError, match=r"no key 'nonexistent.key'.*\+nonexistent.key=1"):
        load_lazy_config(LAZY, ["nonexistent.key=1"])
    cfg = load_lazy_config(LAZY, ["train.max_iter=2", "+nonexistent.key=1"])
    assert cfg.train.max_iter == 2 and cfg.nonexistent.key == 1


# ---------------------------------------------------------------------------------------------
# Item 7: names went into comparison.md unescaped


def _tiny_gt() -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
             "iscrowd": 0} for i in (1, 2)]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "c|<b>"}]}


def test_item7_names_are_escaped_in_the_report_or_refused(tmp_path):
    from resnext_det.evaluation import compare_results

    dets = [{"image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.9} for i in (1, 2)]
    names = ["R", "a|b", "<script>alert(1)</script>", "$x"]
    compare_results(_tiny_gt(), dict.fromkeys(names, dets), bootstrap=0, out_dir=tmp_path,
                    progress=False)  # fmt: skip
    md = (tmp_path / "comparison.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and "<b>" not in md
    lines = md.splitlines()
    rows = 0
    for k, line in enumerate(lines):  # every row of "a|b" has as many cells as its header
        if line.startswith("| a\\|b"):
            start = max(
                i for i in range(k) if lines[i].startswith("|--") or lines[i].startswith("|:")
            )
            header = lines[start - 1]
            assert line.replace("\\|", "").count("|") == header.count("|"), (header, line)
            rows += 1
    assert rows >= 2  # the main table and all metrics
    assert json.loads((tmp_path / "comparison.json").read_text())["models"].keys() == set(names)
    for bad in ("x\n## heading", "a\rb", "", "tab\there"):
        with pytest.raises(ValueError, match="model name"):
            compare_results(_tiny_gt(), {"R": dets, bad: dets}, bootstrap=0, progress=False)


# ---------------------------------------------------------------------------------------------
# Item 8: tracebacks instead of one line


def test_item8_lazy_train_errors_are_one_line(tmp_path, capsys):
    from resnext_det.commands.lazy_train import main

    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('boom')\n")
    folder = tmp_path / "folder.py"
    folder.mkdir()
    for config, expected in [
        (raises, "raised RuntimeError while loading: boom"),  # was a traceback
        (folder, "is a folder"),  # was "does not exist"
        (tmp_path / "missing.py", "does not exist"),
        (tmp_path / "c.yaml", "must be a .py file"),
    ]:
        assert main(["--config-file", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lazyconfig_train_net: error: ") and expected in err, err
        assert err.count("\n") == 1


def test_item8_a_symlink_loop_in_an_input_folder_is_left_out_and_named(tmp_path, caplog):
    from resnext_det.predict import expand_inputs

    (tmp_path / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")  # was a RuntimeError traceback
    with caplog.at_level(logging.WARNING, logger="resnext_det.predict"):
        assert expand_inputs([str(tmp_path)]) == [(tmp_path / "a.png").resolve()]
    assert "loop.png" in caplog.text
    with pytest.raises(FileNotFoundError, match="loop.png"):
        expand_inputs([str(tmp_path / "loop.png")])


# ---------------------------------------------------------------------------------------------
# Item 9: the smaller ones


class _OneFileServer:
    def __init__(self, body: bytes):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for the GET handler
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


def test_item9_a_url_without_hash_that_serves_no_checkpoint_is_not_kept(tmp_path, monkeypatch):
    from resnext_det.weights.hub import MIRROR_ENV, WeightsSource, cache_dir, fetch
    from resnext_det.weights.io import CheckpointError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    server = _OneFileServer(b"<html><body>Sign in to download</body></html>")
    try:
        source = WeightsSource(server.url("/model.pth"), server.url("/model.pth"), "a URL")
        with pytest.raises(CheckpointError, match="not a checkpoint.*nothing was kept"):
            fetch(source, progress=False)
        assert [p for p in cache_dir().iterdir()] == []
        cached = cache_dir() / source.cache_name  # e.g. left by an older version
        cached.write_bytes(b"<html>error</html>")
        with pytest.raises(CheckpointError, match=f"{cached}.*not a checkpoint.*Delete it"):
            fetch(source, progress=False)
    finally:
        server.httpd.shutdown()


def test_item9_a_model_named_dot_dot_gives_visible_gallery_files(tmp_path, synthetic):
    from resnext_det.evaluation import compare_results

    gt = json.loads(synthetic.val_json.read_text())
    hit = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
            "score": 0.9} for a in gt["annotations"]]  # fmt: skip
    report = compare_results(synthetic.val_json, {"R": [], "..": hit}, bootstrap=0,
                             allow_missing_images=True,
                             out_dir=tmp_path / "cmp", images=synthetic.val_image_root,
                             progress=False)  # fmt: skip
    pictures = [Path(e["picture"]) for g in report["gallery"] for e in g["images"]]
    assert pictures and all(not p.name.startswith(".") for p in pictures)
    assert all((tmp_path / "cmp" / p).is_file() for p in pictures)


def test_item9_ground_truth_outside_the_image_root_is_said(tmp_path, caplog):
    from resnext_det.evaluation import load_ground_truth
    from resnext_det.evaluation.gallery import image_paths

    gt = _tiny_gt()
    gt["images"][0]["file_name"] = "../../../etc/x.png"
    gt["images"][1]["file_name"] = "/abs/y.png"
    with caplog.at_level(logging.WARNING, logger="resnext_det.evaluation.gallery"):
        image_paths(load_ground_truth(gt), tmp_path / "root")
    assert "2 of the ground truth's file_name lie outside" in caplog.text


# ---------------------------------------------------------------------------------------------
# Item 2 (in this process): the stop policy of train_runs, checkpoint and exact resume


SCHEDULE = ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()",
            "CPU_TRAINING.NUM_THREADS", "1"]  # fmt: skip


def _cfg(ds, out: Path):
    cfg = load_config(TINY, ["OUTPUT_DIR", str(out), *SCHEDULE])
    cfg.DATASETS.COCO_REGISTER = [["synthetic_train", str(ds.train_json), str(ds.train_image_root)]]
    cfg.freeze()
    return cfg


def test_item2_sigint_stops_the_queue_checkpoints_the_running_run_and_it_resumes_exactly(
    tmp_path, synthetic, monkeypatch
):
    from resnext_det.training import seeds

    original = seeds.StopWhenAsked.after_step

    def interrupt_at_iteration_1(self):
        if self.trainer.iter == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, inside the run of seed 0
        original(self)

    monkeypatch.setattr(seeds.StopWhenAsked, "after_step", interrupt_at_iteration_1)
    handler = signal.getsignal(signal.SIGINT)
    cfg = _cfg(synthetic, tmp_path / "runs")
    with pytest.raises(seeds.SeedRunsInterrupted) as info:
        seeds.train_runs([(cfg, 0), (cfg, 1)])
    assert signal.getsignal(signal.SIGINT) is handler  # put back
    exc = info.value
    assert exc.exit_status == 130 and exc.finished == []
    assert [(r.seed, r.iteration) for r in exc.stopped] == [(0, 1)]
    assert [r.seed for r in exc.not_started] == [1]
    assert "not started: seed 1" in str(exc) and "run the same command again" in str(exc)
    seed_0 = tmp_path / "runs" / "seed_0"
    assert exc.stopped[0].checkpoint == str(seed_0 / "model_0000001.pth")
    assert (seed_0 / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert not (tmp_path / "runs" / "seed_1").exists()  # never started

    monkeypatch.setattr(seeds.StopWhenAsked, "after_step", original)
    finals = seeds.train_runs([(cfg, 0)])  # the same call again: resumes at iteration 2
    whole = seeds.train_runs([(_cfg(synthetic, tmp_path / "whole"), 0)])
    a = torch.load(finals[0], map_location="cpu", weights_only=True)["model"]
    b = torch.load(whole[0], map_location="cpu", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""benchmarks: records, numerics against the baseline, reports, errors in library terms.

Small images at real widths (the benchmark's models are the paper's): the point is the wiring and
the numbers each task checks, not the times.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from benchmarks import (
    CPU_TRAIN_DEFAULTS,
    SETTINGS,
    BenchmarkInputError,
    benchmark_markdown,
    run_benchmark,
    write_benchmark,
)
from benchmarks.measure import PeakProbe, quiet_verdict
from benchmarks.variants import bench_config
from resnext_det.speed import (
    cpu_training_settings,
    keep_freed_memory,
    native_bf16,
    onednn_1x1_dilation,
)

REPO = Path(__file__).resolve().parents[2]
FP32_TOL = 1e-4
BF16_TOL = 5e-2


def test_benchmark_runs_and_writes_reports(tmp_path):
    """A small CPU run of the benchmark: records, the baseline ratio, numerics, atomic files."""
    report = run_benchmark(
        models=["R-50"],
        tasks=["forward"],
        settings=["optimized", "optimized+bf16"],
        size=(64, 64),
        repeats=2,
        warmup=0,
        progress=False,
    )
    rows = {r["setting"]: r for r in report["results"]}
    assert list(rows) == ["detectron2", "optimized", "optimized+bf16"]  # baseline added, first
    assert rows["detectron2"]["ratio_to_baseline"] == 1.0
    assert rows["optimized"]["max_rel_err_vs_baseline"] < FP32_TOL
    assert 0 < rows["optimized+bf16"]["max_rel_err_vs_baseline"] < BF16_TOL
    assert rows["optimized"]["fold_bn"] and rows["optimized+bf16"]["amp"] == "bfloat16"
    assert all(len(r["times_s"]) == 2 and r["min_s"] <= r["median_s"] for r in rows.values())
    lo, hi = rows["optimized"]["ratio_spread"]
    assert lo <= rows["optimized"]["ratio_to_baseline"] <= hi
    # fvcore's count of R-50's res2..res5 at 64x64: 4.1 GMACs at 224x224, scaled by area.
    assert rows["detectron2"]["gmacs_per_image"] == pytest.approx(4.1 * 64**2 / 224**2, rel=0.1)
    # The peak is timed in the same rounds; a 64x64 backbone reaches a fraction of it.
    peak = report["peak"]["R-50 forward"]
    assert set(peak) == {"float32", "bfloat16"} and len(peak["float32"]["times_s"]) == 2
    assert 0 < rows["detectron2"]["fraction_of_peak"] < 1
    fp32_peak = max(k["gmacs_per_s"] for k in peak["float32"]["kernels"].values())
    d2 = rows["detectron2"]
    assert d2["fraction_of_peak"] == pytest.approx(d2["achieved_gmacs_per_s"] / fp32_peak)
    assert rows["optimized+bf16"]["peak_dtype"] == "bfloat16"
    assert all(r["minor_faults_per_call"] >= 0 for r in rows.values())
    assert not report["enough_rounds"]
    out = tmp_path / "b"
    write_benchmark(report, f"{out}.json", f"{out}.md", f"{out}.png", command="cmd")
    assert json.loads((tmp_path / "b.json").read_text())["results"][1]["setting"] == "optimized"
    md = (tmp_path / "b.md").read_text()
    assert "| R-50" in md and "Indicative only" in md and "Machine peak" in md
    assert "| matmul | 1x1 conv NHWC | peak |" in md
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.md", "b.png"]


def test_backward_train_inference_and_torchvision():
    """Every other task, with the torchvision setting, checked against detectron2 in one run."""
    report = run_benchmark(
        models=["R-50"],
        tasks=["backward", "train", "inference"],
        settings=["torchvision", "channels_last", "channels_last+amp", "optimized"],
        size=(64, 96),
        repeats=1,
        warmup=0,
        peak=False,
        progress=False,
    )
    rows = {(r["task"], r["setting"]): r for r in report["results"]}
    assert sorted(rows) == sorted(
        [
            ("backward", "detectron2"),
            ("backward", "torchvision"),  # torchvision's own ResNet, detectron2's weights
            ("backward", "channels_last"),
            ("backward", "channels_last+amp"),
            ("train", "detectron2"),
            ("train", "channels_last"),
            ("train", "channels_last+amp"),
            ("inference", "detectron2"),
            ("inference", "channels_last"),
            ("inference", "optimized"),
        ]
    )
    # backward compares the input gradient: torchvision's network is the same one in NCHW.
    assert rows["backward", "torchvision"]["max_rel_err_vs_baseline"] < 1e-3
    # train compares the RPN losses of one seeded forward: fp32 equal, bf16 within tolerance.
    assert rows["train", "channels_last"]["max_rel_err_vs_baseline"] < FP32_TOL
    amp = rows["train", "channels_last+amp"]
    assert amp["amp"] == "bfloat16" and 0 < amp["max_rel_err_vs_baseline"] < BF16_TOL
    assert rows["inference", "optimized"]["max_rel_err_vs_baseline"] < FP32_TOL
    # A training iteration is counted as 3x the detector's inference forward.
    train, infer = rows["train", "detectron2"], rows["inference", "detectron2"]
    assert train["gmacs_per_image"] == pytest.approx(3 * infer["gmacs_per_image"])
    assert rows["backward", "detectron2"]["fraction_of_peak"] is None  # peak=False


def test_cpu_train_defaults_are_what_the_trainer_applies():
    """The benchmark's ``cpu_train_defaults`` is cpu_training_settings of the config: the fast
    path the trainer takes by default, not a copy of it."""
    cfg = bench_config("R-50", torch.device("cpu"), "train")
    expected = cpu_training_settings(cfg)
    assert expected is not None and expected.channels_last
    assert expected.amp_dtype == ("bfloat16" if native_bf16() else "")
    resolved = SETTINGS[CPU_TRAIN_DEFAULTS].resolve(cfg)
    assert (resolved.channels_last, resolved.amp) == (expected.channels_last, expected.amp_dtype)
    assert SETTINGS[CPU_TRAIN_DEFAULTS].applies_to("train")
    assert not SETTINGS[CPU_TRAIN_DEFAULTS].applies_to("inference")
    cuda = cfg.clone()
    cuda.MODEL.DEVICE = "cuda"
    assert SETTINGS[CPU_TRAIN_DEFAULTS].resolve(cuda) is None  # a CPU setting only

    def train_run(**kwargs):
        return run_benchmark(
            models=["R-50"],
            tasks=["train"],
            settings=[CPU_TRAIN_DEFAULTS],
            size=(64, 64),
            repeats=1,
            warmup=0,
            peak=False,
            progress=False,
            **kwargs,
        )

    report = train_run()
    row = report["results"][1]
    assert row["setting"] == CPU_TRAIN_DEFAULTS
    assert row["channels_last"] == expected.channels_last
    assert row["amp"] == (expected.amp_dtype or "float32")
    # The trainer also keeps freed memory, a process setting: a run with the allocator's
    # default for every variant says the setting lacks it, memory="kept" applies it to all.
    assert expected.keep_freed_memory and resolved.keeps_freed_memory
    assert row["lacks_process_setting"] and not report["config"]["freed_memory_kept"]
    assert row["freed_memory"] == "returned"
    assert "`cpu_train_defaults` here lack(s) the project's" in benchmark_markdown(report)
    kept = keep_freed_memory()  # what the run below does first; False off glibc
    report = train_run(memory="kept")
    assert report["config"]["freed_memory_kept"] == kept
    assert report["results"][1]["lacks_process_setting"] == (not kept)
    assert ("Freed memory **kept**" in benchmark_markdown(report)) == kept
    assert {r["freed_memory"] for r in report["results"]} == {"kept" if kept else "returned"}


@pytest.mark.slow
def test_as_shipped_times_each_path_with_its_own_allocator_setting():
    """memory="as-shipped": detectron2 here with the allocator's default, the project's CPU
    training defaults and folded inference in a child process that keeps freed memory (what the
    project's tools do), the same weights and inputs in both (outputs equal to the baseline's),
    interleaved, with the faster peak of the two processes."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    report = run_benchmark(
        models=["R-50"],
        tasks=["forward", "train"],
        settings=["optimized", CPU_TRAIN_DEFAULTS, "channels_last"],
        size=(64, 64),
        repeats=2,
        warmup=0,
        memory="as-shipped",
        progress=False,
    )
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime > before  # a child ran them
    rows = {(r["task"], r["setting"]): r for r in report["results"]}
    kept = rows["forward", "optimized"]["freed_memory"]
    assert kept in ("kept", "returned")  # "returned" only off glibc (no mallopt)
    assert rows["train", CPU_TRAIN_DEFAULTS]["freed_memory"] == kept
    for task in ("forward", "train"):
        assert rows[task, "detectron2"]["freed_memory"] == "returned"
        assert rows[task, "channels_last"]["freed_memory"] == "returned"  # an ingredient
        assert len(rows[task, "detectron2"]["times_s"]) == 2
    assert rows["forward", "optimized"]["max_rel_err_vs_baseline"] < FP32_TOL
    assert rows["train", CPU_TRAIN_DEFAULTS]["max_rel_err_vs_baseline"] < BF16_TOL
    assert not any(r["lacks_process_setting"] for r in report["results"]) or kept == "returned"
    for by_dtype in report["peak"].values():
        assert {p["freed_memory"] for p in by_dtype.values()} <= {"kept", "returned"}
    md = benchmark_markdown(report)
    assert "Freed memory **as shipped**" in md and "`optimized`, `cpu_train_defaults` ran" in md


def test_compile_settings_pass_freezing_to_inductor_only_where_named(monkeypatch):
    """optimized+compile+freezing compiles with inductor's freezing, optimized+compile without
    (the compile itself is stubbed here: minutes on a small CPU; test_train compiles for real)."""
    from benchmarks import variants

    calls = []
    monkeypatch.setattr(variants, "compile_module", lambda m, **kw: calls.append(kw) or m)
    report = run_benchmark(
        models=["R-50"],
        tasks=["forward"],
        settings=["optimized+compile", "optimized+compile+freezing"],
        size=(64, 64),
        repeats=1,
        warmup=0,
        peak=False,
        progress=False,
    )
    assert calls == [{}, {"options": {"freezing": True}}]
    rows = {r["setting"]: r for r in report["results"]}
    assert rows["optimized+compile+freezing"]["compile"]
    assert rows["optimized+compile+freezing"]["max_rel_err_vs_baseline"] < FP32_TOL


@pytest.mark.slow
def test_memory_keeping_child_reports_its_failure_and_stops():
    from benchmarks.process import BenchmarkWorkerError, KeptMemoryProcess

    case = dict(model_name="X-26", task="forward", device="cpu", size=(64, 64), batch=1, seed=0)
    with pytest.raises(BenchmarkWorkerError, match=r"failed on start(?s:.*)unknown model 'X-26'"):
        KeptMemoryProcess(case, [SETTINGS["optimized"]], threads=1, peak=False, clock="wall")
    assert not multiprocessing.active_children()  # stopped, not left behind
    with pytest.raises(BenchmarkInputError, match=r"memory: must be one of"):
        run_benchmark(memory="keep", progress=False)


def test_benchmark_settings_and_errors():
    assert not SETTINGS["optimized"].applies_to("train")  # a folded model cannot train
    assert not SETTINGS["amp"].applies_to("forward")  # inference settings name their dtype
    assert not SETTINGS["torchvision"].applies_to("inference")
    assert SETTINGS["amp"].amp_dtype(torch.device("cpu")) == "bfloat16"
    assert SETTINGS["amp"].amp_dtype(torch.device("cuda")) == "float16"
    with pytest.raises(BenchmarkInputError, match=r"settings: unknown \['fastest'\]") as e:
        run_benchmark(settings=["fastest"])
    assert e.value.field == "settings"
    with pytest.raises(BenchmarkInputError, match=r"size: must be two numbers.*\(8, 8\)") as e:
        run_benchmark(size=(8, 8))
    assert e.value.field == "size" and "--" not in str(e.value)  # library terms, no CLI flag
    with pytest.raises(BenchmarkInputError, match=r"models: unknown model 'X-26'") as e:
        run_benchmark(models=["X-26"], progress=False, peak=False)
    assert "--" not in str(e.value)
    with pytest.raises(BenchmarkInputError, match=r"repeats: must be a positive integer"):
        run_benchmark(repeats=0)


def _tool(name: str):
    """tools/NAME.py as a module (the tools are scripts, not package modules)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_cli_names_its_own_flag(capsys):
    """tools/benchmark.py translates the library's field into its flag."""
    tool = _tool("benchmark")
    with pytest.raises(SystemExit) as e:
        tool.main(["--size", "8", "8", "--output", "unused"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: --size: must be two numbers (H, W) of at least 32; got (8, 8)" in err


def test_quiet_verdict_and_label():
    # The run's own threads may load the machine; other load before it may not.
    assert quiet_verdict([[0.4, 0.3, 0.2], [2.3, 1.0, 0.5]], cores=2, own_threads=2)["quiet"]
    assert not quiet_verdict([[1.2, 0.3, 0.2], [2.3, 1.0, 0.5]], cores=2, own_threads=2)["quiet"]
    assert not quiet_verdict([[0.4, 0.3, 0.2], [3.5, 1.0, 0.5]], cores=2, own_threads=2)["quiet"]
    assert quiet_verdict([[0.4, 0.3, 0.2], [0.9, 0.5, 0.3]], cores=2)["quiet"]
    loaded = quiet_verdict([[0.4, 0.3, 0.2], [1.2, 0.5, 0.3]], cores=2)
    assert not loaded["quiet"] and loaded["max_load_1min"] == 1.2 and loaded["limit"] == 1.0
    assert not quiet_verdict([None, None], cores=2)["quiet"]  # unknown load is not quiet
    report = {
        "machine": {"cpu": "x", "cpu_count": 2, "torch": "t", "threads": 2},
        "config": {"device": "cpu", "size": [64, 64], "batch": 1, "repeats": 5, "warmup": 1},
        "quiet": loaded,
        "results": [],
    }
    assert "**NOT quiet**: the 1-minute load average reached 1.2 on 2 cores" in (
        benchmark_markdown(report)
    )
    report["quiet"] = quiet_verdict([[0.3, 0.3, 0.3]], cores=2)
    assert "Quiet machine" in benchmark_markdown(report)


def test_peak_probe_takes_the_faster_of_a_matmul_and_a_1x1_convolution():
    """The same n^3 multiply-adds both ways; the peak is the faster median, and both are kept."""
    probe = PeakProbe(torch.device("cpu"), n=256)
    assert probe.conv_shape == (2, 128, 32, 16)  # 2 * 128 * 128 * 512 = 256^3
    probe.warmup()
    probe.round()
    probe.round()
    s = probe.summary()["float32"]
    for k in PeakProbe.KERNELS:
        t = sorted(s["kernels"][k]["times_s"])
        assert s["kernels"][k]["gmacs_per_s"] == pytest.approx(256**3 / 1e9 / ((t[0] + t[1]) / 2))
    rates = {k: v["gmacs_per_s"] for k, v in s["kernels"].items()}
    assert s["kernel"] == max(rates, key=rates.get) and s["gmacs_per_s"] == max(rates.values())
    assert s["spread_gmacs_per_s"][0] <= s["gmacs_per_s"] <= s["spread_gmacs_per_s"][1]
    # Both kernels compute what they claim: the convolution is a matrix product per pixel.
    conv, x, w = probe.calls["float32"]["conv1x1_nhwc"]
    assert x.is_contiguous(memory_format=torch.channels_last)
    # oneDNN's kernel on one thread too (dilation (2, 2) there: speed.onednn_1x1_convolutions)
    assert conv.keywords["dilation"] == onednn_1x1_dilation()
    y = conv(x, w)
    ref = torch.einsum("bchw,oc->bohw", x, w[:, :, 0, 0])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="power of two"):
        PeakProbe(torch.device("cpu"), n=100)


def test_demo_train_config_keeps_the_warmup_and_the_command_names_the_threads(tmp_path):
    """The demo probes compress the schedule but not the warm-up (shortened, the demo diverged)
    and train through tools/train_net.py with the thread count given."""
    from benchmarks.training import demo_train_config, train_net_command
    from resnext_det.data import make_synthetic_coco

    x = REPO / "configs" / "demo" / "faster_rcnn_X_demo.yaml"
    full = demo_train_config(x, tmp_path / "full")
    cfg = demo_train_config(x, tmp_path / "o", max_iter=full.SOLVER.MAX_ITER // 2, seed=3)
    assert cfg.SOLVER.MAX_ITER == full.SOLVER.MAX_ITER // 2 and cfg.SEED == 3
    half = tuple(round(s / 2) for s in full.SOLVER.STEPS)
    assert tuple(cfg.SOLVER.STEPS) == half
    assert cfg.SOLVER.WARMUP_ITERS == full.SOLVER.WARMUP_ITERS
    data = make_synthetic_coco(tmp_path / "d", num_train=2, num_val=1, image_size=64)
    cmd = train_net_command(x, data, tmp_path / "o", threads=1, max_iter=100, seed=2)
    assert cmd[1].endswith("tools/train_net.py")
    tail = cmd[cmd.index("OUTPUT_DIR") :]
    opts = dict(zip(tail[::2], tail[1::2]))
    assert opts["CPU_TRAINING.NUM_THREADS"] == "1" and opts["SEED"] == "2"
    assert opts["SOLVER.MAX_ITER"] == "100" and opts["DATASETS.TEST"] == "()"
    assert opts["CPU_TRAINING.ENABLED"] == "True"
    # The first version's arm: detectron2's own settings (no CPU_TRAINING at all).
    first = train_net_command(x, data, tmp_path / "o", threads=2, cpu_training=False)
    tail = first[first.index("OUTPUT_DIR") :]
    cfg = demo_train_config(x, tmp_path / "o")
    cfg.merge_from_list(tail)
    from resnext_det.speed import cpu_training_settings

    assert cpu_training_settings(cfg) is None


def test_peak_check_times_the_matmul_probe_beside_a_1x1_convolution(tmp_path):
    """tools/peak_check.py: both ways of the same multiply-adds per dtype, fp32 results within
    fp32 rounding of float64, written with the load and the quiet verdict."""
    argv = ["--threads", "1", "--repeats", "1", "--output", str(tmp_path / "peak")]
    _tool("peak_check").main(argv)
    rep = json.loads((tmp_path / "peak.json").read_text())
    assert [(r["threads"], r["dtype"]) for r in rep["results"]] == [(1, "float32"), (1, "bfloat16")]
    for r in rep["results"]:
        for key in ("matmul", "conv1x1_nchw", "conv1x1_nhwc", "conv1x1_nhwc_onednn"):
            assert r[f"{key}_gmacs_per_s"] > 0
    fp32 = rep["results"][0]
    assert fp32["matmul_rel_err_vs_float64"] < 1e-5
    assert fp32["conv1x1_nhwc_rel_err_vs_float64"] < 1e-5
    assert "quiet" in rep["quiet"] and rep["command"].startswith("python tools/peak_check.py")

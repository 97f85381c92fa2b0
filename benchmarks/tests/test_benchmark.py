"""benchmarks: records, numerics against the baseline, reports, errors in library terms.

Small images at real widths (the benchmark's models are the paper's): the point is the wiring and
the numbers each task checks, not the times.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
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
from benchmarks.measure import PeakProbe, peak_memory, profiler_lines_hidden, quiet_verdict
from benchmarks.process import PROBE_BYTES, allocator_env, started_keeping_freed_memory
from benchmarks.timing import _merge_peaks
from benchmarks.variants import bench_config, build_variants
from resnext_det.runtime import KEEP_FREED_MEMORY_ENV
from resnext_det.speed import ONEDNN_1X1_DILATION, cpu_training_settings, native_bf16

REPO = Path(__file__).resolve().parents[2]
FP32_TOL = 1e-4
BF16_TOL = 5e-2
# Where KEEP_FREED_MEMORY_ENV takes effect (glibc reads it at start-up); elsewhere the records say
# what each process measured, which these tests cannot foretell.
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


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
    # memory="returned": every variant with the allocator's default; here, in a process started
    # without the setting (in a child started so otherwise).
    here = report["allocator"][0]
    assert here["process"] == "this" and here["pid"] == os.getpid()
    assert report["config"]["freed_memory_here"] == here["freed_memory"]
    if not started_keeping_freed_memory():
        assert len(report["allocator"]) == 1 and here["freed_memory"] == "returned"
    if GLIBC:
        assert {r["freed_memory"] for r in rows.values()} == {"returned"}
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
    # memory="kept": for every variant, the baseline included; where this process does not keep
    # freed memory they run in a child started with KEEP_FREED_MEMORY_ENV (this process's
    # allocator is left as it is).
    before = report["config"]["freed_memory_here"]
    report = train_run(memory="kept")
    assert report["config"]["freed_memory_here"] == before
    kept = {r["freed_memory"] for r in report["results"]}
    if GLIBC:
        assert kept == {"kept"} and report["config"]["freed_memory_kept"]
        assert not report["results"][1]["lacks_process_setting"]
        assert "Freed memory **kept**" in benchmark_markdown(report)
    else:
        assert report["config"]["freed_memory_kept"] == (kept == {"kept"})


@pytest.mark.parametrize("threads", [1, 2])
def test_settings_resolve_the_onednn_1x1_convolutions_from_the_thread_count(threads):
    """On one thread the commands send the 1x1 convolutions to oneDNN (the trainer with
    CPU_TRAINING.NUM_THREADS 1, inference in a one-thread process); the benchmark's settings
    resolve the same from its own thread count, and the variants it builds have them."""
    torch.set_num_threads(threads)
    cfg = bench_config("R-50", torch.device("cpu"), "train")
    assert threads == cfg.CPU_TRAINING.NUM_THREADS  # this process's count, for the trainer
    trainer = cpu_training_settings(cfg)
    bench = SETTINGS[CPU_TRAIN_DEFAULTS].resolve(cfg)
    assert (bench.channels_last, bench.amp) == (trainer.channels_last, trainer.amp_dtype)
    assert bench.onednn_1x1 == trainer.onednn_1x1 == (threads == 1)
    assert bench.keeps_freed_memory == trainer.keep_freed_memory
    optimized = SETTINGS["optimized"].resolve(cfg)
    assert optimized.onednn_1x1 == (threads == 1)
    assert not SETTINGS["channels_last"].resolve(cfg).onednn_1x1  # not what the commands run
    cuda = cfg.clone()
    cuda.MODEL.DEVICE = "cuda"
    assert not SETTINGS["optimized"].resolve(cuda).onednn_1x1  # CPU convolutions only
    variants, _, _ = build_variants(
        model_name="R-50", task="forward", device="cpu", size=(64, 64), batch=1, seed=0,
        settings=[optimized, SETTINGS["channels_last"].resolve(cfg)],
    )  # fmt: skip
    folded, plain = (
        {c.dilation for c in v.model.modules()
         if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (1, 1) and c.stride == (1, 1)}
        for v in variants
    )  # fmt: skip
    assert folded == {ONEDNN_1X1_DILATION if threads == 1 else (1, 1)} and plain == {(1, 1)}


@pytest.mark.slow
def test_as_shipped_times_each_path_with_its_own_allocator_setting():
    """memory="as-shipped": detectron2 with the allocator's default, the project's CPU training
    defaults and folded inference with freed memory kept (what the project's tools do), each in a
    process started so, the same weights and inputs in both (outputs equal to the baseline's),
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
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime > before  # a child ran some
    rows = {(r["task"], r["setting"]): r for r in report["results"]}
    for task in ("forward", "train"):
        assert len(rows[task, "detectron2"]["times_s"]) == 2
        assert len(rows[task, "channels_last"]["times_s"]) == 2
    assert rows["forward", "optimized"]["max_rel_err_vs_baseline"] < FP32_TOL
    assert rows["train", CPU_TRAIN_DEFAULTS]["max_rel_err_vs_baseline"] < BF16_TOL
    # One child per case, started with the setting this process lacks.
    here = report["allocator"][0]
    children = report["allocator"][1:]
    assert [c["case"] for c in children] == ["R-50 forward", "R-50 train"]
    assert all(c["process"] == "child" and c["pid"] != os.getpid() for c in children)
    if not GLIBC:
        return
    # What each process measured of its own allocator: the setting it was started with.
    for c in children:
        assert c["started_with_keep_freed_memory_env"] == (here["freed_memory"] == "returned")
        assert c["freed_memory"] == ("kept" if c["started_with_keep_freed_memory_env"] else
                                     "returned")  # fmt: skip
    for task in ("forward", "train"):
        assert rows[task, "detectron2"]["freed_memory"] == "returned"
        assert rows[task, "channels_last"]["freed_memory"] == "returned"  # an ingredient
    assert rows["forward", "optimized"]["freed_memory"] == "kept"
    assert rows["train", CPU_TRAIN_DEFAULTS]["freed_memory"] == "kept"
    assert not any(r["lacks_process_setting"] for r in report["results"])
    md = benchmark_markdown(report)
    assert "Freed memory **as shipped**" in md and "`optimized`, `cpu_train_defaults` ran" in md
    assert "lack(s) the project's" not in md


def test_a_process_started_with_the_setting_keeps_freed_memory():
    """KEEP_FREED_MEMORY_ENV in a new process's environment: a freed 64 MiB block is reused
    (next to no page faults the second time) and the probe says "kept"; without it, the block is
    unmapped when freed and faulted in again, and the probe says "returned"."""
    script = (
        "import json; from benchmarks.process import freed_memory_probe; "
        "print(json.dumps(freed_memory_probe()))"
    )
    got = {}
    for keep in (True, False):
        env = allocator_env(keep)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        got[keep] = json.loads(out.stdout.strip().splitlines()[-1])
    if not GLIBC:
        pytest.skip(f"the variables are glibc's; measured here: {got}")
    kept, returned = got[True], got[False]
    pages = PROBE_BYTES // os.sysconf("SC_PAGE_SIZE")
    assert kept["pages"] == returned["pages"] == pages
    assert kept["freed_memory"] == "kept" and kept["repeat_faults"] < pages // 20, kept
    assert returned["freed_memory"] == "returned", returned
    # The default faults the block in again as the first time (huge pages may cut both counts).
    assert returned["repeat_faults"] > returned["first_faults"] // 2 > 0, returned
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" not in thp.read_text():
        assert returned["repeat_faults"] > pages // 2, returned


def test_allocator_env_sets_or_takes_out_the_setting():
    base = {"PATH": "/bin", "MALLOC_MMAP_THRESHOLD_": "1"}
    assert allocator_env(True, base) == {"PATH": "/bin", **KEEP_FREED_MEMORY_ENV}
    assert allocator_env(False, base) == {"PATH": "/bin"}
    assert set(KEEP_FREED_MEMORY_ENV) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    assert started_keeping_freed_memory(allocator_env(True, base))
    assert not started_keeping_freed_memory(allocator_env(False, base))
    assert not started_keeping_freed_memory(base)  # another threshold is not the setting


def test_merged_peak_is_the_faster_process_per_dtype():
    """Per dtype the faster of the processes' peaks, with the allocator of the process that
    reached it."""
    here = {"float32": {"gmacs_per_s": 10.0}, "bfloat16": {"gmacs_per_s": 30.0}}
    child = {"float32": {"gmacs_per_s": 12.0}, "bfloat16": {"gmacs_per_s": 20.0}}
    merged = _merge_peaks([("returned", here), ("kept", child)])
    assert merged == {
        "float32": {"gmacs_per_s": 12.0, "freed_memory": "kept"},
        "bfloat16": {"gmacs_per_s": 30.0, "freed_memory": "returned"},
    }
    assert _merge_peaks([]) == {}


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
def test_child_process_reports_its_failure_and_stops(monkeypatch):
    from benchmarks import process

    started = []

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    real_popen = process.subprocess.Popen
    monkeypatch.setattr(process.subprocess, "Popen", popen)
    case = dict(model_name="X-26", task="forward", device="cpu", size=(64, 64), batch=1, seed=0)
    with pytest.raises(
        process.BenchmarkWorkerError, match=r"failed on start(?s:.*)unknown model 'X-26'"
    ):
        process.AllocatorProcess(
            case, [SETTINGS["optimized"]], keep_freed_memory=True, threads=1, peak=False,
            clock="wall",
        )  # fmt: skip
    assert len(started) == 1 and started[0].returncode == 0  # it exited: stopped, not left behind
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
    assert "NOT quiet" not in benchmark_markdown(report)
    # The limit is 0.5 per core, inclusive: 1.0 on 2 cores is quiet, anything above is loaded.
    assert quiet_verdict([[1.0, 0, 0], [1.0, 0, 0]], cores=2)["quiet"]
    assert not quiet_verdict([[1.01, 0, 0], [0.2, 0, 0]], cores=2)["quiet"]
    assert not quiet_verdict([[0.2, 0, 0], [1.01, 0, 0]], cores=2)["quiet"]
    assert quiet_verdict([[0.2, 0, 0], [2.0, 0, 0]], cores=2, own_threads=1)["quiet"]
    assert not quiet_verdict([[0.2, 0, 0], [2.01, 0, 0]], cores=2, own_threads=1)["quiet"]
    assert quiet_verdict([[4.0, 0, 0]], cores=8)["limit"] == 4.0


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
    y = conv(x, w)
    ref = torch.einsum("bchw,oc->bohw", x, w[:, :, 0, 0])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="power of two"):
        PeakProbe(torch.device("cpu"), n=100)
    # oneDNN's kernel on one thread too, as the project's one-thread processes run their 1x1
    # convolutions (speed.onednn_1x1_convolutions); PyTorch's own choice on more threads.
    for threads, dilation in ((1, ONEDNN_1X1_DILATION), (2, (1, 1))):
        torch.set_num_threads(threads)
        conv, x, w = PeakProbe(torch.device("cpu"), n=16).calls["float32"]["conv1x1_nhwc"]
        assert conv.keywords["dilation"] == dilation
        ref = torch.einsum("bchw,oc->bohw", x, w[:, :, 0, 0])
        torch.testing.assert_close(conv(x, w), ref, rtol=1e-4, atol=1e-4)


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
    assert rep["command"].startswith("python tools/peak_check.py")
    # The verdict is the one of the loads it recorded, with its one thread allowed for.
    loads = [rep["load_average_before"], rep["load_average_after"]]
    assert rep["quiet"] == quiet_verdict(loads, own_threads=1)
    # The oneDNN column: dilation (2, 2) on one thread only, as the commands decide.
    tool = _tool("peak_check")
    assert tool._onednn_dilation(1) == ONEDNN_1X1_DILATION and tool._onednn_dilation(2) == (1, 1)


def test_profiler_lines_stay_off_the_console_unless_verbose(capfd):
    """torch.profiler's C++ side writes its own lines to fd 2 (on a machine without CUDA among
    them "gpuGetDeviceCount failed with code 35"); the benchmark measures CPU memory with it and
    keeps those lines back unless verbose, passing on every other line."""
    kineto = (
        b"ERROR:2026-12-04 14:59:18 5203:5203 DeviceProperties.cpp:56] gpuGetDeviceCount failed\n"
    )
    with profiler_lines_hidden():
        os.write(2, kineto)
        os.write(2, b"a line of the run\n")
    assert capfd.readouterr().err == "a line of the run\n"
    with profiler_lines_hidden(False):
        os.write(2, kineto)
    assert capfd.readouterr().err == kineto.decode()
    mib, how = peak_memory(torch.device("cpu"), lambda: torch.ones(1 << 20).sum())
    assert how == "cpu_profiler_allocations" and mib == pytest.approx(4.0, rel=0.01)
    err = capfd.readouterr().err
    assert ".cpp:" not in err and "gpuGetDeviceCount" not in err, err


def test_cli_prints_progress_and_results_only(tmp_path, capfd):
    """tools/benchmark.py: the results on stdout, and on stderr no line of the profiler or of
    the third-party notices (those with --verbose only)."""
    out = tmp_path / "b"
    _tool("benchmark").main(
        ["--models", "R-50", "--settings", "optimized", "--size", "64", "64", "--repeats", "1",
         "--warmup", "0", "--no-peak", "--no-plot", "--memory", "returned", "--output", str(out)]
    )  # fmt: skip
    captured = capfd.readouterr()
    assert "| R-50" in captured.out and "optimized" in captured.out
    for noise in (".cpp:", "gpuGetDeviceCount", "Warning", "pkg_resources"):
        assert noise not in captured.err, captured.err
    rows = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [r["setting"] for r in rows] == ["detectron2", "optimized"]

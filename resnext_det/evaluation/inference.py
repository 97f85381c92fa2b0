"""Models mode of the comparison: build each detector, run it on the same images, time it.

Each model is built from its config (:func:`~resnext_det.load_config`), checked to have weights for
every parameter (:mod:`~resnext_det.weights.complete`), loaded with
:func:`~resnext_det.load_pretrained`, counted (backbone params and
FLOPs, before BatchNorm folding changes the parameter set) and put through
:func:`~resnext_det.optimize_for_inference`. Inference uses detectron2's test loader and mapper,
so resizing is the config's ``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST`` as in detectron2's own
evaluation; detections go to COCO json with detectron2's ``instances_to_coco_json``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Union

import torch
from tqdm import tqdm

from ..weights.complete import check_load_report
from ..weights.hub import resolve_weights_path
from ..weights.io import sha256_of
from .compare import check_distinct_runs, compare_results

__all__ = [
    "build_detector",
    "compare_models",
    "config_complexity",
    "dataset_ground_truth",
    "run_inference",
]

logger = logging.getLogger(__name__)

ModelSpec = tuple  # (config path or CfgNode, weights path or None)
DatasetLike = Union[str, tuple]


def build_detector(
    config: Any,
    weights: str | os.PathLike | None,
    device: str = "cpu",
    *,
    allow_partial_weights: bool = False,
    what: str = "",
):
    """Build a detector from a yaml path (or a CfgNode) and load ``weights``.

    Args:
        allow_partial_weights: score the model even if the weights leave parameters (heads)
            at their random initialisation; otherwise that raises
            :class:`~resnext_det.weights.complete.PartialWeightsError`.
        what: who is being built, for messages.

    Returns:
        (model in eval mode, frozen cfg, the weights path used or None).
    """
    from detectron2.config import CfgNode
    from detectron2.modeling import build_model

    from ..weights import load_pretrained

    cfg = _load_config(config)
    cfg.MODEL.DEVICE = device
    weights = str(weights) if weights else (cfg.MODEL.WEIGHTS or None)
    if weights:
        cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    model = build_model(cfg)
    model.eval()
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file {weights!r} does not exist")
        report = load_pretrained(model, weights)
        problems = check_load_report(report, allow_partial=allow_partial_weights, what=what)
    else:
        from ..weights.complete import check_complete_weights

        problems = check_complete_weights(
            model, None, allow_partial=allow_partial_weights, what=what
        )
    for problem in problems:  # only reached with allow_partial_weights
        logger.warning(
            "%s (config %s): %s",
            what or "model",
            config if not isinstance(config, CfgNode) else "<CfgNode>",
            problem,
        )
    return model, cfg, weights


def dataset_ground_truth(dataset: DatasetLike) -> tuple[str, Any, list[dict], dict[int, int]]:
    """The registered name, COCO ground truth, records and contiguous->dataset category ids.

    Args:
        dataset: a name registered in detectron2's DatasetCatalog, or ``(json_file, image_root)``
            (registered here under a name derived from the paths).
    """
    from detectron2.data import MetadataCatalog

    from ..data import get_dataset_dicts_checked, register_coco_dataset

    if isinstance(dataset, (tuple, list)):
        json_file, image_root = map(str, dataset)
        digest = hashlib.sha1(
            f"{os.path.abspath(json_file)}|{os.path.abspath(image_root)}".encode()
        )
        name = f"compare_{Path(json_file).stem}_{digest.hexdigest()[:8]}"
        register_coco_dataset(name, json_file, image_root)
    else:
        name = dataset
    dicts = get_dataset_dicts_checked(name)
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None) if "json_file" in meta.as_dict() else None
    if json_file and Path(json_file).is_file():
        gt: Any = json_file
    else:
        # A data set registered from records, not a json: convert with detectron2's own writer.
        from detectron2.data.datasets.coco import convert_to_coco_dict

        gt = convert_to_coco_dict(name)
    id_map = meta.as_dict().get("thing_dataset_id_to_contiguous_id")
    reverse = {v: k for k, v in id_map.items()} if id_map else {}
    return name, gt, dicts, reverse


def run_inference(
    model: torch.nn.Module,
    cfg: Any,
    dicts: list[dict],
    category_map: dict[int, int],
    *,
    desc: str = "inference",
    progress: bool = True,
    warmup: int = 2,
) -> tuple[list[dict], dict[str, float]]:
    """Run ``model`` on every record, one image at a time, and time the forward passes.

    The first ``warmup`` images are run but not timed (allocator and kernel selection make them
    slow; detectron2's ``inference_on_dataset`` skips 5 the same way).

    Returns:
        (COCO results list, {"seconds_per_image" (mean), "median_seconds_per_image",
        "timed_images", "device"}).
    """
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    from ..data import CheckedDatasetMapper

    loader = build_detection_test_loader(dicts, mapper=CheckedDatasetMapper(cfg, is_train=False))
    warmup = min(warmup, max(len(dicts) - 1, 0))
    cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"
    results, times = [], []
    load_before = _load_average()
    with torch.inference_mode():
        for i, inputs in enumerate(
            tqdm(loader, total=len(dicts), desc=desc, disable=not progress, leave=False)
        ):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs = model(inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
            for inp, out in zip(inputs, outputs):
                dets = instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"])
                for d in dets:
                    d["category_id"] = category_map.get(d["category_id"], d["category_id"])
                results.extend(dets)
    timing = {
        "seconds_per_image": statistics.fmean(times) if times else math.nan,
        "median_seconds_per_image": statistics.median(times) if times else math.nan,
        "timed_images": len(times),
        "device": str(cfg.MODEL.DEVICE),
        # What the time depends on besides the model: ms/img changes many times over with the
        # machine's other work and the thread count (report.timing_note says so).
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
    }
    return results, timing


def _weights_digest(weights: str | os.PathLike) -> str | None:
    """sha256 of a weights file; None for one that is missing (build_detector names it)."""
    local = resolve_weights_path(weights)
    return sha256_of(local) if os.path.isfile(local) else None


def _load_average() -> float | None:
    """The 1-minute load average, or None where the system has none (Windows)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _flops_size(cfg: Any, model: torch.nn.Module, size: tuple[int, int] | None) -> tuple[int, int]:
    """The input FLOPs are counted at: ``size``, or the test resolution (short side
    MIN_SIZE_TEST, long side MAX_SIZE_TEST), rounded up to the backbone's size divisibility
    (an FPN needs sides divisible by 32, which is what detectron2 pads to)."""
    if size is None:
        short = cfg.INPUT.MIN_SIZE_TEST
        short = short[0] if isinstance(short, (list, tuple)) else short
        size = (int(short), int(cfg.INPUT.MAX_SIZE_TEST))
    div = max(int(getattr(model.backbone, "size_divisibility", 0) or 1), 1)
    return tuple(int(math.ceil(s / div) * div) for s in size)


def _file_name(name: str, run: int | None = None) -> str:
    """``results_<name>.json`` (``results_<name>_run<k>.json`` per run of a model with several),
    the name through the project's one injective mapping (``a/b`` -> ``a%2Fb``)."""
    from ..io import file_name_for

    stem = file_name_for(name) + ("" if run is None else f"_run{run}")
    return f"results_{stem}.json"


def _file_names(specs: dict[str, list]) -> dict[tuple[str, int], str]:
    """(model, run) -> its results file, refused where two would share one (a model named
    ``R_run1`` beside run 1 of ``R``), before any inference runs."""
    names = {
        (model, i): _file_name(model, i if len(runs) > 1 else None)
        for model, runs in specs.items()
        for i in range(len(runs))
    }
    owners: dict[str, tuple[str, int]] = {}
    for key, fname in names.items():
        if fname in owners:
            (a, i), (b, j) = owners[fname], key
            raise ValueError(
                f"models {a!r} (run {i}) and {b!r} (run {j}) would both write {fname}; "
                "rename one of them"
            )
        owners[fname] = key
    return names


def _as_specs(name: str, spec: Any) -> list[tuple]:
    """``(config, weights)`` is one run; a list of such pairs is one per training run."""

    def is_pair(x: Any) -> bool:
        return isinstance(x, (tuple, list)) and len(x) == 2 and not isinstance(x[0], (tuple, list))

    if isinstance(spec, list) and spec and all(isinstance(x, (tuple, list)) for x in spec):
        runs = spec
    else:
        runs = [spec]
    for i, r in enumerate(runs):
        if not is_pair(r):
            where = f"models[{name!r}]" + (f"[{i}]" if len(runs) > 1 else "")
            raise ValueError(f"{where} must be (config, weights); got {r!r}")
    return [tuple(r) for r in runs]


def compare_models(
    models: dict[str, ModelSpec | list[ModelSpec]],
    dataset: DatasetLike,
    out_dir: str | os.PathLike | None,
    *,
    baseline: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    device: str = "cpu",
    max_images: int | None = None,
    flops_size: tuple[int, int] | None = None,
    inference: Any = None,
    progress: bool = True,
    allow_partial_weights: bool = False,
    gallery: int = 8,
    gallery_threshold: float = 0.5,
) -> dict[str, Any]:
    """Run several detectors on the same images and compare them (see :func:`compare_results`).

    Args:
        models: name -> ``(config, weights)``, or a list of them, one per training run (e.g.
            seeds 0..N-1 of the same config); config is a yaml path or a CfgNode, weights a
            checkpoint path (detectron2 ``{"model": ...}`` or any layout ``load_pretrained``
            reads) or None for the config's ``MODEL.WEIGHTS``.
        dataset: a registered data set name, or ``(coco_json, image_root)``.
        out_dir: where to write comparison.* and each model's ``results_<name>.json`` (all only
            after every model succeeded); None writes nothing.
        baseline: name of the baseline (default: the first model).
        bootstrap, seed, confidence: see :func:`compare_results`.
        device: "cpu" or "cuda"; every model runs on it, in this process, one after the other.
        max_images: evaluate on the first N images only (ground truth restricted to them).
        flops_size: (H, W) for the FLOP count; default the config's test resolution.
        inference: how the models run: by default each as its config's ``MODEL.RESNEXT`` says
            (fp32-equal optimisation unless it sets ``INFERENCE_AMP_DTYPE``), as ``--eval-only``;
            a function of a model's config giving its
            :class:`~resnext_det.speed.InferenceSettings`; or settings for every model
            (``InferenceSettings(optimize=False)`` times the models as built). Each model's is
            in the report (``inference``) and the timing note.
            This process's threads and allocator are the caller's
            (:func:`resnext_det.runtime.configure_process`).
        progress: tqdm bars.
        allow_partial_weights: score models whose weights leave parameters randomly
            initialised (refused otherwise, naming the groups).
        gallery, gallery_threshold: the report's gallery of the images where each model and
            the baseline differ most (see :func:`compare_results`); 0 pictures: none.

    Returns:
        The report dict of :func:`compare_results`, with backbone params/GFLOPs and
        seconds per image per model (of its first run; every run's under ``per_run_info``).

    Example:
        >>> compare_models({"R": [(cfg_r, "r/seed_0/model_final.pth"), (cfg_r, "r/seed_1/...")],
        ...                 "X": [(cfg_x, "x/seed_0/model_final.pth"), (cfg_x, "x/seed_1/...")]},
        ...                "my_val", "out/compare")
    """
    from ..complexity import count_complexity
    from ..speed import InferenceSettings, autocast, prepare_for_inference
    from .coco import load_ground_truth, load_results

    if not models:
        raise ValueError("compare_models needs at least one model")
    from .report import check_model_names, check_out_dir

    check_out_dir(out_dir)  # before minutes of inference
    if out_dir is not None and isinstance(dataset, (tuple, list)):
        from ..io import check_output_location

        check_output_location(out_dir, dataset, what="out_dir")
    name, gt, dicts, category_map = dataset_ground_truth(dataset)
    gt = load_ground_truth(gt)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {max_images}")
        dicts = dicts[:max_images]
    gt = gt.subset([d["image_id"] for d in dicts]) if len(dicts) < gt.num_images else gt
    specs = {name: _as_specs(name, spec) for name, spec in models.items()}
    check_model_names(list(specs))
    file_names = _file_names(specs)
    # The same weights twice (a copy, another name) is one training run, not two: refused by
    # content before any inference.
    check_distinct_runs(
        {n: [w for _, w in runs if w] for n, runs in specs.items()},
        _weights_digest,
        "the same weights",
    )
    results: dict[str, list] = {}
    info: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for model_name, runs in specs.items():
        results[model_name], run_info = [], []
        for i, (config, weights) in enumerate(runs):
            what = f"model {model_name!r}" + (f", run {i}" if len(runs) > 1 else "")
            model, cfg, used = build_detector(
                config, weights, device, allow_partial_weights=allow_partial_weights, what=what
            )
            size = _flops_size(cfg, model, flops_size)
            cx = count_complexity(model.backbone, size)
            settings = InferenceSettings.resolve(inference, cfg)
            model = prepare_for_inference(model, settings)
            desc = f"inference {model_name}" + (f" run {i}" if len(runs) > 1 else "")
            with autocast(device, settings.amp_dtype):
                dets, timing = run_inference(
                    model, cfg, dicts, category_map, desc=desc, progress=progress
                )
            del model
            fname = file_names[model_name, i]
            source = str(Path(out_dir) / fname) if out_dir is not None else f"<{desc}>"
            results[model_name].append(load_results(dets, gt, name=source))
            run_info.append(
                {
                    "config": str(config) if not hasattr(config, "dump") else "<CfgNode>",
                    "weights": used,
                    "backbone": cfg.MODEL.BACKBONE.NAME,
                    "backbone_params": cx.params,
                    "backbone_gflops": cx.gflops,
                    "flops_input_size": list(size),
                    "inference": settings.describe(),
                    **timing,
                    **({"results_json": str(Path(out_dir) / fname)} if out_dir else {}),
                }
            )
            if out_dir is not None:
                extra[fname] = dets
        info[model_name] = dict(run_info[0])
        times = [r["seconds_per_image"] for r in run_info if math.isfinite(r["seconds_per_image"])]
        if times:
            info[model_name]["seconds_per_image"] = statistics.fmean(times)
        if len(runs) > 1:
            info[model_name]["per_run_info"] = run_info
            info[model_name].pop("results_json", None)
            info[model_name]["weights"] = [r["weights"] for r in run_info]
    report = compare_results(
        gt,
        results,
        baseline=baseline,
        bootstrap=bootstrap,
        seed=seed,
        confidence=confidence,
        out_dir=out_dir,
        model_info=info,
        allow_missing_images=True,  # complete by construction: every image was run
        extra_files=extra or None,
        extra_report={"dataset": name},
        images={d["image_id"]: d["file_name"] for d in dicts},
        gallery=gallery,
        gallery_threshold=gallery_threshold,
        progress=progress,
    )
    return report


def config_complexity(config: Any, flops_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Backbone params and GFLOPs of the detector a config describes (no weights, no data): what
    results mode reports when it is told each model's config."""
    from detectron2.modeling import build_backbone

    from resnext_det.complexity import count_complexity

    cfg = _load_config(config)
    backbone = build_backbone(cfg)
    size = _flops_size(cfg, type("M", (), {"backbone": backbone})(), flops_size)
    cx = count_complexity(backbone, size)
    return {
        "config": str(config),
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "backbone_params": cx.params,
        "backbone_gflops": cx.gflops,
        "flops_input_size": list(size),
    }


def _load_config(config: Any):
    """A mutable copy of ``config`` (a CfgNode, frozen or not, or a yaml path), on the CPU."""
    from detectron2.config import CfgNode

    from ..config import load_config

    cfg = load_config(base=config) if isinstance(config, CfgNode) else load_config(config)
    cfg.MODEL.DEVICE = "cpu"
    return cfg

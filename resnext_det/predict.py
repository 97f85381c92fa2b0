"""Pictures of predictions: a trained detector on images, drawn with detectron2's ``Visualizer``.

The counterpart of detectron2's ``demo/demo.py`` (same flags: ``--config-file``, ``--input``,
``--output``, ``--confidence-threshold``, ``--opts``; weights through ``MODEL.WEIGHTS``, any
layout the project reads). ``resnext-det predict`` (``tools/predict.py``) is its command line:
:mod:`resnext_det.commands.predict`.

Outputs in ``--output``: one PNG per input image (``<stem>.png``; a repeated stem gets ``_2``,
``_3``...), ``images.json`` (a COCO file of the images and categories, no annotations) and
``coco_instances_results.json`` (COCO results, image ids from ``images.json``), so that
``COCO("images.json").loadRes("coco_instances_results.json")`` reads them. With
``--compare A=CFG:W B=CFG:W`` each PNG shows the two models side by side, and each model's results
go to ``<name>/coco_instances_results.json``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .speed import InferenceSettings, autocast, prepare_for_inference

__all__ = [
    "IMAGE_SUFFIXES",
    "Predictor",
    "expand_inputs",
    "parse_model_spec",
    "prediction_config",
    "run_predictions",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPEC = re.compile(r"^(?P<name>[^=]+)=(?P<config>.+?\.ya?ml):(?P<weights>.+)$")


def expand_inputs(paths: Iterable[str]) -> list[Path]:
    """Image files from files, folders (their images, sorted) and glob patterns, in the order
    given, each once.

    Raises:
        FileNotFoundError: a path that does not exist, or a pattern or folder with no image.
    """
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            where = f"folder {text}"
        elif p.is_file():
            found = [p]
            where = text
        elif glob.has_magic(text):
            found = sorted(Path(q) for q in glob.glob(text, recursive=True) if Path(q).is_file())
            where = f"pattern {text!r}"
        else:
            raise FileNotFoundError(f"--input {text}: no such file or folder")
        if not found:
            raise FileNotFoundError(
                f"--input {where}: no image files ({', '.join(IMAGE_SUFFIXES)})"
            )
        out.extend(found)
    return list(dict.fromkeys(q.resolve() for q in out))


def parse_model_spec(text: str) -> tuple[str, str, str]:
    """``NAME=CONFIG.yaml:WEIGHTS`` -> (name, config, weights); weights may hold ``://``."""
    m = _SPEC.match(text)
    if not m:
        raise ValueError(f"--compare takes NAME=CONFIG.yaml:WEIGHTS; got {text!r}")
    return m["name"], m["config"], m["weights"]


class Predictor:
    """A detector from a yacs config (``MODEL.WEIGHTS`` loaded by the project's checkpointer),
    called on BGR images as detectron2's ``DefaultPredictor`` is.

    The model goes through the same inference set-up as ``--eval-only`` and the comparison
    (:func:`~resnext_det.speed.prepare_for_inference`: BN folded and channels_last by default,
    fp32-equal; ``MODEL.RESNEXT.INFERENCE_AMP_DTYPE`` as autocast around each call).

    Args:
        cfg: the config (``MODEL.WEIGHTS`` must give every detector parameter).
        allow_partial_weights: draw a detector whose weights leave parameters (heads) random.
        inference: the inference settings; default those of ``cfg.MODEL.RESNEXT``.
    """

    def __init__(
        self,
        cfg: Any,
        *,
        allow_partial_weights: bool = False,
        inference: InferenceSettings | None = None,
    ):
        from detectron2.engine import DefaultPredictor

        from .weights import ResNeXtCheckpointer
        from .weights.complete import check_complete_weights

        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        # DefaultPredictor loads with detectron2's own checkpointer, which reads fewer layouts:
        # it gets no file, and the project's checkpointer loads it after the completeness check.
        cfg.MODEL.WEIGHTS = ""
        self._predictor = DefaultPredictor(cfg)
        self.model = self._predictor.model
        check_complete_weights(
            self.model, weights, allow_partial=allow_partial_weights, what="prediction"
        )
        ResNeXtCheckpointer(self.model).load(weights)
        self.inference = inference or InferenceSettings.from_config(cfg)
        prepare_for_inference(self.model, self.inference)
        self.cfg = cfg

    def __call__(self, bgr: np.ndarray) -> Any:
        with autocast(self.cfg.MODEL.DEVICE, self.inference.amp_dtype):
            out = self._predictor(bgr)
        return out["instances"].to("cpu")


@dataclass
class _Model:
    name: str
    predictor: Predictor
    metadata: Any
    results: list[dict]


def _metadata(cfg: Any) -> Any:
    from detectron2.data import MetadataCatalog

    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(names[0] if names else "__unused")


def _category_id(metadata: Any, contiguous: int) -> int:
    # detectron2's COCOEvaluator maps its contiguous class ids back to the dataset's the same way.
    mapping = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if mapping:
        return {v: k for k, v in mapping.items()}[contiguous]
    return contiguous + 1  # COCO category ids start at 1


def _categories(metadata: Any, num_classes: int) -> list[dict]:
    classes = list(getattr(metadata, "thing_classes", None) or [])
    return [
        {
            "id": _category_id(metadata, i),
            "name": classes[i] if i < len(classes) else f"class {i}",
        }
        for i in range(num_classes)
    ]


def _num_classes(cfg: Any) -> int:
    return (
        cfg.MODEL.RETINANET.NUM_CLASSES
        if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
        else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    )


def _coco_results(instances: Any, image_id: int, metadata: Any) -> list[dict]:
    boxes = instances.pred_boxes.tensor.numpy().astype(float)
    out = []
    for (x0, y0, x1, y1), score, cls in zip(
        boxes, instances.scores.numpy().tolist(), instances.pred_classes.numpy().tolist()
    ):
        out.append(
            {
                "image_id": image_id,
                "category_id": _category_id(metadata, int(cls)),
                "bbox": [
                    round(float(x0), 2),
                    round(float(y0), 2),
                    round(float(x1 - x0), 2),
                    round(float(y1 - y0), 2),
                ],
                "score": round(float(score), 5),
            }
        )
    return out


def _draw(rgb: np.ndarray, instances: Any, metadata: Any, title: str | None) -> np.ndarray:
    import cv2
    from detectron2.utils.visualizer import Visualizer

    drawn = Visualizer(rgb, metadata, scale=1.0).draw_instance_predictions(instances)
    panel = drawn.get_image()
    if title:
        bar = np.full((24, panel.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(bar, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        panel = np.concatenate([bar, panel], axis=0)
    return panel


def _unique_names(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(f"{p.stem}.png" if n == 1 else f"{p.stem}_{n}.png")
    return names


def run_predictions(
    models: Sequence[tuple[str, Any]],
    inputs: Sequence[Path],
    output: str | os.PathLike,
    *,
    progress: bool = True,
    allow_partial_weights: bool = False,
    inference: InferenceSettings | None = None,
) -> dict[str, Any]:
    """Run each ``(name, cfg)`` model on ``inputs``; write the pictures and the json files.
    ``inference``: the settings of every model (default: each config's ``MODEL.RESNEXT``).

    Returns:
        ``{"images": [...png paths], "results": {name: results json path}, "images_json": path}``.
    """
    import cv2
    from detectron2.data.detection_utils import read_image
    from tqdm import tqdm

    from .io import write_bytes_atomic, write_json_atomic

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [
        _Model(
            name,
            Predictor(cfg, allow_partial_weights=allow_partial_weights, inference=inference),
            _metadata(cfg),
            [],
        )
        for name, cfg in models
    ]
    images: list[dict] = []
    written: list[Path] = []
    names = _unique_names(inputs)
    for image_id, (path, png_name) in enumerate(
        tqdm(list(zip(inputs, names)), desc="predict", unit="image", disable=not progress), 1
    ):
        try:
            bgr = read_image(str(path), format="BGR")
        except Exception as exc:  # PIL raises many types for a bad file
            raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
        images.append(
            {"id": image_id, "file_name": str(path), "height": bgr.shape[0], "width": bgr.shape[1]}
        )
        panels = []
        for m in loaded:
            instances = m.predictor(bgr)
            m.results.extend(_coco_results(instances, image_id, m.metadata))
            title = m.name if len(loaded) > 1 else None
            panels.append(_draw(bgr[:, :, ::-1], instances, m.metadata, title))
        picture = np.concatenate(panels, axis=1)
        ok, encoded = cv2.imencode(".png", picture[:, :, ::-1])
        if not ok:  # pragma: no cover - cv2 fails only on impossible shapes
            raise RuntimeError(f"could not encode the picture of {path}")
        written.append(write_bytes_atomic(out / png_name, encoded.tobytes(), durable=False))

    first = loaded[0]
    coco = {
        "images": images,
        "annotations": [],
        "categories": _categories(first.metadata, _num_classes(first.predictor.cfg)),
    }
    images_json = write_json_atomic(out / "images.json", coco, indent=1)
    results = {}
    for m in loaded:
        target = (
            out / "coco_instances_results.json"
            if len(loaded) == 1
            else out / m.name / "coco_instances_results.json"
        )
        results[m.name] = write_json_atomic(target, m.results)
    return {"images": written, "results": results, "images_json": images_json}


def prediction_config(config_file: str, opts: list[str], threshold: float) -> Any:
    """The yacs config of a detector to draw: ``config_file`` with ``opts``, and ``threshold``
    as every head's test score threshold (as detectron2's demo does)."""
    from .config import load_config

    cfg = load_config(config_file, opts)
    # As detectron2's demo: the threshold is the heads' test score threshold.
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = threshold
    return cfg

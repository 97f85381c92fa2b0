"""Pictures of predictions: a trained detector on images, drawn with detectron2's ``Visualizer``.

The counterpart of detectron2's ``demo/demo.py`` (same flags: ``--config-file``, ``--input``,
``--output``, ``--confidence-threshold``, ``--opts``; weights through ``MODEL.WEIGHTS``, any
layout the project reads). ``resnext-det predict`` (``tools/predict.py``) is its command line:
:mod:`resnext_det.commands.predict`.

Outputs in an ``--output`` folder: one picture per input image, in the input's format
(``<stem><suffix>``; a repeated name gets ``_2``, ``_3``...), ``images.json`` (a COCO file of
the images and categories, no annotations) and ``coco_instances_results.json`` (COCO results,
image ids from ``images.json``), so that ``COCO("images.json").loadRes(
"coco_instances_results.json")`` reads them. With ``--compare A=CFG:W B=CFG:W`` each picture
shows the two models side by side, and each model's results go to
``<name>/coco_instances_results.json`` (the name as :func:`resnext_det.io.file_name_for` makes
it a file name: ``a/b`` -> ``a%2Fb``, never a path that leaves ``--output``).

As detectron2's ``demo.py``, ``--output pic.jpg`` with one input writes that one picture (its
suffix decides the format; no json files), and without ``--output`` nothing is written: the
detections are printed (detectron2's demo opens a window instead; this runs without a display).

``--output`` may not be, contain, or lie inside an input (:func:`resnext_det.io.
check_output_location`): a picture never replaces an image. Images declaring more than
:data:`resnext_det.data.images.MAX_IMAGE_PIXELS` pixels are refused before they are decoded.
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

from .data.images import MAX_IMAGE_PIXELS
from .errors import BadFileError
from .io import utf8_name
from .speed import InferenceChoice, InferenceSettings, autocast, prepare_for_inference

__all__ = [
    "IMAGE_SUFFIXES",
    "BadImageError",
    "Predictor",
    "expand_inputs",
    "parse_model_spec",
    "prediction_config",
    "run_predictions",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPEC = re.compile(r"^(?P<name>[^=]+)=(?P<config>.+?\.ya?ml):(?P<weights>.+)$")


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; entries that are not files (a folder
    named ``x.png``, a dangling link or a symbolic-link loop) are left out, and said so."""
    found, skipped = [], []
    for q in sorted(folder.iterdir()):
        if q.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        (found if q.is_file() else skipped).append(q)
    if skipped:
        logger.warning(
            f"--input {folder}: left out {len(skipped)} entries that are not readable files "
            f"(e.g. {skipped[0].name}: a folder, a dangling link or a link loop)"
        )
    return found


def _resolved(p: Path) -> Path:
    try:
        return p.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: Python < 3.13's symlink loop
        raise FileNotFoundError(f"--input {p}: cannot be resolved ({exc})") from None


class BadImageError(BadFileError):
    """An input image that cannot be read, would be read wrongly, or declares too many pixels."""


def expand_inputs(paths: Iterable[str]) -> list[Path]:
    """Image files from files, folders (their images, sorted) and glob patterns, in the order
    given, each once.

    Raises:
        FileNotFoundError: a path that does not exist (a dangling link or a link loop
            included), or a pattern or folder with no image.
    """
    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = _image_files(p)
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
    for q in out:  # the results json holds each name as text
        if not utf8_name(q):
            raise ValueError(
                f"--input {os.fsencode(q)!r}: the name is not valid UTF-8, which the results "
                "json cannot hold; rename the file"
            )
    return list(dict.fromkeys(_resolved(q) for q in out))


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
        inference: the inference settings, or a function of ``cfg`` that gives them; default
            those of ``cfg.MODEL.RESNEXT`` (:meth:`~resnext_det.speed.InferenceSettings.resolve`).
    """

    def __init__(
        self,
        cfg: Any,
        *,
        allow_partial_weights: bool = False,
        inference: InferenceChoice = None,
    ):
        from detectron2.engine import DefaultPredictor

        from .weights import ResNeXtCheckpointer

        weights = cfg.MODEL.WEIGHTS
        cfg = cfg.clone()
        cfg.defrost()
        # DefaultPredictor loads with detectron2's own checkpointer, which reads fewer layouts:
        # it gets no file, and the project's checkpointer loads it, checked to be complete.
        cfg.MODEL.WEIGHTS = ""
        self._predictor = DefaultPredictor(cfg)
        self.model = self._predictor.model
        ResNeXtCheckpointer(self.model).load_complete(
            weights, allow_partial=allow_partial_weights, what="prediction"
        )
        self.inference = InferenceSettings.resolve(inference, cfg)
        prepare_for_inference(self.model, self.inference)
        self.cfg = cfg

    def __call__(self, bgr: np.ndarray) -> Any:
        """The ``Instances`` of the BGR image ``bgr`` (H, W, 3), in its pixels, fp32 fields.

        Raises:
            BadImageError: resized for the model (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``)
                it would have no pixel row or column, or more than ``MAX_IMAGE_PIXELS``.
        """
        import torch
        from detectron2.data.transforms import ResizeShortestEdge

        h, w = bgr.shape[:2]
        short, longest = self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        nh, nw = ResizeShortestEdge.get_output_shape(h, w, short, longest) if short else (h, w)
        if min(nh, nw) < 1 or nh * nw > MAX_IMAGE_PIXELS:
            raise BadImageError(
                f"a {w}x{h} image resized for the model (INPUT.MIN_SIZE_TEST {short}, "
                f"MAX_SIZE_TEST {longest}) would be {nw}x{nh} pixels, but needs at least one "
                f"row and column and at most {MAX_IMAGE_PIXELS} pixels"
            )
        # inference_mode rather than DefaultPredictor's no_grad alone: no version counters or
        # view tracking on the activations; the same numbers.
        with torch.inference_mode(), autocast(self.cfg.MODEL.DEVICE, self.inference.amp_dtype):
            out = self._predictor(bgr)
        return _in_fp32(out["instances"].to("cpu"))


def _in_fp32(instances: Any) -> Any:
    """``instances`` with every floating-point field in fp32 (under bf16 autocast the heads'
    scores come out bf16, which numpy, and so every writer of results, cannot read)."""
    import torch

    for name, value in instances.get_fields().items():
        tensor = getattr(value, "tensor", value)  # Boxes, Keypoints: a .tensor inside
        if (
            isinstance(tensor, torch.Tensor)
            and tensor.is_floating_point()
            and tensor.dtype != torch.float32
        ):
            instances.set(name, tensor.float() if value is tensor else type(value)(tensor.float()))
    return instances


@dataclass
class _Model:
    name: str
    predictor: Predictor
    metadata: Any
    results: list[dict]


def _metadata(cfg: Any) -> Any:
    """The class names to label with: those the weights record (saved by the trainer from its
    training data set), else the registered ``DATASETS.TEST``/``TRAIN`` data set's. The weights'
    come first because this process rarely registered the data set the model was trained on."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.catalog import Metadata

    from .weights.reader import recorded_classes

    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    registered = MetadataCatalog.get(names[0] if names else "__unused")
    recorded = recorded_classes(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else {}
    if not recorded:
        return registered
    # An unregistered Metadata: the process's catalog is left as it was.
    meta = Metadata(name=f"classes of {cfg.MODEL.WEIGHTS}")
    meta.thing_classes = recorded["thing_classes"]
    if "thing_dataset_ids" in recorded:
        meta.thing_dataset_id_to_contiguous_id = {
            d: i for i, d in enumerate(recorded["thing_dataset_ids"])
        }
    theirs = registered.as_dict().get("thing_classes")
    if theirs and list(theirs) != meta.thing_classes:
        logger.warning(
            f"{cfg.MODEL.WEIGHTS} was trained on classes {meta.thing_classes[:5]}, but data set "
            f"{registered.name!r} has {list(theirs)[:5]}: labelling with the weights' classes"
        )
    return meta


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
    from detectron2.utils.visualizer import Visualizer

    from .evaluation.gallery import drop_overlapping_labels, titled

    drawn = Visualizer(rgb, metadata, scale=1.0).draw_instance_predictions(instances)
    drop_overlapping_labels(drawn)
    panel = drawn.get_image()
    return titled(panel, title) if title else panel


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """The input's name (its format kept: a JPEG stays a JPEG, as detectron2's demo writes it)
    per input, ``<stem>_2<suffix>``... for a repeated name, never a name taken (inputs
    ``a/x.jpg``, ``b/x.jpg`` and ``x_2.jpg`` get ``x.jpg``, ``x_2.jpg``, ``x_2_2.jpg``)."""
    used: set[str] = set()
    names = []
    for p in paths:
        suffix = p.suffix.lower()
        name, n = f"{p.stem}{suffix}", 1
        while name in used:
            n += 1
            name = f"{p.stem}_{n}{suffix}"
        used.add(name)
        names.append(name)
    return names


def _output_file(output: Path, inputs: Sequence[Path]) -> bool:
    """Whether ``output`` names one picture (detectron2's demo: a file for one input, its suffix
    deciding the format) rather than a folder.

    Raises:
        ValueError: a picture file name for several inputs, or an existing file that is not one.
    """
    if output.is_dir():
        return False
    picture = output.suffix.lower() in IMAGE_SUFFIXES
    if picture and len(inputs) == 1:
        return True
    if picture:
        raise ValueError(
            f"--output {output}: a picture file for {len(inputs)} inputs; give a folder (one "
            "picture per input), or one input"
        )
    if output.exists():
        raise NotADirectoryError(f"--output {str(output)!r} is an existing file, not a folder")
    return False


def _encode(picture_rgb: np.ndarray, suffix: str, path: Path) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(suffix, picture_rgb[:, :, ::-1])
    if not ok:  # pragma: no cover - cv2 fails only on impossible shapes
        raise RuntimeError(f"could not encode the picture of {path} as {suffix}")
    return encoded.tobytes()


def _describe(path: Path, instances: Any, metadata: Any, name: str | None) -> str:
    """Detections as lines a person reads: ``image: class score [x0 y0 x1 y1]``."""
    classes = list(getattr(metadata, "thing_classes", None) or [])
    who = f"{name}: " if name else ""
    lines = [f"{path}: {who}{len(instances)} detection{'s' * (len(instances) != 1)}"]
    boxes = instances.pred_boxes.tensor.tolist()
    for box, score, cls in zip(boxes, instances.scores.tolist(), instances.pred_classes.tolist()):
        label = classes[cls] if cls < len(classes) else f"class {cls}"
        lines.append(f"  {label} {score:.2f} [{' '.join(f'{v:.0f}' for v in box)}]")
    return "\n".join(lines)


def _read(path: Path, max_pixels: int | None) -> np.ndarray:
    from .data.images import ImageCheckError, read_image

    try:
        return read_image(path, "BGR", max_pixels=max_pixels)
    except ImageCheckError as exc:
        raise BadImageError(f"--input image {exc}") from None


def run_predictions(
    models: Sequence[tuple[str, Any]],
    inputs: Sequence[Path],
    output: str | os.PathLike | None,
    *,
    progress: bool = True,
    allow_partial_weights: bool = False,
    inference: InferenceChoice = None,
    input_folders: Iterable[str | os.PathLike] = (),
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> dict[str, Any]:
    """Run each ``(name, cfg)`` model on ``inputs``; write the pictures and the json files.

    As detectron2's ``demo.py``: ``output`` is a file for one input (the picture only, in the
    format its suffix names), a folder otherwise (pictures in each input's format, and the json
    files); None writes nothing and returns the detections as text (``"text"``): detectron2's
    demo would open a window, and this runs where there is no display.

    Args:
        models: ``(name, cfg)`` per model; a name becomes a sub-folder's name through
            :func:`~resnext_det.io.file_name_for` (with two or more models).
        inputs: the image files.
        output: the picture file (one input) or folder to write, or None; it may not be,
            contain or lie inside an input file or one of ``input_folders`` (checked before any
            model is built).
        inference: settings for every model, or a function of a model's config that gives
            its own (default: each config's ``MODEL.RESNEXT``).
        input_folders: the folders the inputs were listed from.
        max_pixels: images declaring more pixels are refused before they are decoded.

    Returns:
        ``{"images": [picture paths], "results": {name: results json path}, "images_json":
        path or None, "text": [one block of lines per image]}``.

    Raises:
        OutputLocationError: ``output`` overlaps an input.
        BadImageError: an image that cannot be read or is too large (named).
    """
    from tqdm import tqdm

    from .evaluation.gallery import join_panels
    from .io import (
        check_output_location,
        file_name_for,
        path_inside,
        write_bytes_atomic,
        write_json_atomic,
    )

    if len({file_name_for(name) for name, _ in models}) != len(models):
        raise ValueError(f"models need different names; got {[name for name, _ in models]}")
    out = Path(output) if output is not None else None
    one_file = False
    names = _unique_names(inputs)
    if out is not None:
        check_output_location(out, [*inputs, *input_folders], what="--output")
        one_file = _output_file(out, inputs)
        if len(models) > 1 and not one_file:  # each model's folder beside the pictures
            taken = {"images.json", *names}
            for name, _ in models:
                if file_name_for(name) in taken:
                    raise ValueError(
                        f"model name {name!r}: its folder {out / file_name_for(name)} would "
                        "collide with a picture or images.json written there; rename the model"
                    )
    loaded = [
        _Model(
            name,
            Predictor(cfg, allow_partial_weights=allow_partial_weights, inference=inference),
            _metadata(cfg),
            [],
        )
        for name, cfg in models
    ]
    if out is not None:  # the models loaded: nothing is created for a run that cannot start
        (out.parent if one_file else out).mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    written: list[Path] = []
    text: list[str] = []
    for image_id, (path, png_name) in enumerate(
        tqdm(list(zip(inputs, names)), desc="predict", unit="image", disable=not progress), 1
    ):
        bgr = _read(path, max_pixels)
        images.append(
            {"id": image_id, "file_name": str(path), "height": bgr.shape[0], "width": bgr.shape[1]}
        )
        panels = []
        for m in loaded:
            try:
                instances = m.predictor(bgr)
            except BadImageError as exc:
                raise BadImageError(f"--input image {path}: {exc}") from None
            m.results.extend(_coco_results(instances, image_id, m.metadata))
            title = m.name if len(loaded) > 1 else None
            if out is None:
                text.append(_describe(path, instances, m.metadata, title))
                continue
            panels.append(_draw(bgr[:, :, ::-1], instances, m.metadata, title))
        if out is None:
            continue
        picture = panels[0] if len(panels) == 1 else join_panels(panels)
        target = out if one_file else path_inside(out, png_name)
        written.append(
            write_bytes_atomic(target, _encode(picture, target.suffix.lower(), path), durable=False)
        )

    if out is None or one_file:
        return {"images": written, "results": {}, "images_json": None, "text": text}
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
            else path_inside(out, Path(file_name_for(m.name), "coco_instances_results.json"))
        )
        results[m.name] = write_json_atomic(target, m.results)
    return {"images": written, "results": results, "images_json": images_json, "text": text}


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

"""Pretrained weights: read every checkpoint layout users have, safely, with their conventions."""

from __future__ import annotations

from .torchvision import detectron2_to_torchvision, torchvision_to_detectron2

__all__ = ["detectron2_to_torchvision", "torchvision_to_detectron2"]

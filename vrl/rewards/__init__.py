"""Reward terms: each has ``name``, ``weight`` and ``__call__(responses, samples) -> list[float]``."""

from .accuracy import Accuracy
from .extract import AnswerExtractor
from .format import ThinkAnswerFormat
from .iou import BoxIoU, box_giou, box_iou
from .length import LengthPenalty, OverlongPenalty
from .perception import RepetitionPenalty, VisualPerception

__all__ = [
    "Accuracy",
    "AnswerExtractor",
    "BoxIoU",
    "LengthPenalty",
    "OverlongPenalty",
    "RepetitionPenalty",
    "ThinkAnswerFormat",
    "VisualPerception",
    "box_giou",
    "box_iou",
]

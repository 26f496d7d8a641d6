"""Q-Insight's image-quality tasks, synthetic: degraded scenes with a quality score derived from the degradation.

Q-Insight (Li et al., arXiv 2503.22679; code github.com/bytedance/Q-Insight @08308fd, spec others.md §9) trains
score regression (KonIQ MOS), degradation perception (KADIS-700K: distortion class and severity) and, separately,
pairwise comparison. Here every image is a rendered scene (:mod:`vrl.data.scene`) degraded with PIL / numpy by one
of four distortions at one of five severities (:data:`LEVELS`):

    noise         Gaussian noise, sigma 8 / 16 / 28 / 44 / 64 (of 255)
    compression   JPEG at quality 40 / 20 / 10 / 5 / 2
    blur          Gaussian blur, radius 0.8 / 1.5 / 2.5 / 3.5 / 5 px
    darken        brightness x 0.75 / 0.55 / 0.4 / 0.25 / 0.12

The quality score ([ours]; the released data use human MOS) is ``5 - 0.8 * s`` for severity ``s`` = 1..5 (4.2,
3.4, 2.6, 1.8, 1.0) and 5.0 for a clean image: severities 0.8 apart, so Q-Insight's hit threshold (0.35) pays exactly
one severity's score. Tasks (the row's ``task`` field, which the rewards route on, as Q-Insight's ``task``):

    score        "rate the quality in [1, 5]", answer the score ("3.40", answer_type number)
    dist         "which distortion, how severe", answer {"distortion_class": ..., "severity": ...} (JSON)
    comparison   two images of the same scene at different severities (or kinds): "Image A" / "Image B" for the
                 higher score, "Similar" when the scores are equal

Prompts are Q-Insight's (``SCORE_QUESTION_PROMPT``, ``DIST_QUESTION_PROMPT``; comparison: which image has the
better quality, instead of the released reference-based enhancement comparison).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass

import datasets
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from vrl.data.scene import render, sample_scene
from vrl.data.synthetic import SyntheticStream, build_rows
from vrl.data.tasks import OBJECTS_BY_DIFFICULTY, row_rng

DISTORTIONS = ("noise", "compression", "blur", "darken")
SEVERITIES = ("slight", "moderate", "obvious", "serious", "catastrophic")
TASKS = ("score", "dist", "comparison")
#: Distortion -> its parameter at severities 1..5 (noise sigma, JPEG quality, blur radius, brightness factor).
LEVELS = {
    "noise": (8.0, 16.0, 28.0, 44.0, 64.0),
    "compression": (40, 20, 10, 5, 2),
    "blur": (0.8, 1.5, 2.5, 3.5, 5.0),
    "darken": (0.75, 0.55, 0.4, 0.25, 0.12),
}
GENERATOR_VERSION = 1
SCORE_PROMPT = (
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality. "
    'Return the final answer in JSON format with the following keys: "rating": The score.'
)
DIST_PROMPT = (
    'Analyze the given image and determine if it contains any of the following distortions: "noise", '
    '"compression", "blur", or "darken". If a distortion is present, classify its severity as "slight", '
    '"moderate", "obvious", "serious", or "catastrophic". Return the result in JSON format with the following '
    'keys: "distortion_class": The detected distortion (or "null" if none). and "severity": The severity level '
    '(or "null" if none).'
)
COMPARE_PROMPT = "Which image has the better overall quality? Return exactly one of: Image A, Image B, or Similar."


def quality_score(severity: int) -> float:
    """The derived quality score: 5.0 clean (severity 0), ``5 - 0.8 * severity`` for severities 1..5."""
    if not 0 <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must be in 0..{len(SEVERITIES)}, got {severity}")
    return round(5.0 - 0.8 * severity, 2)


def degrade(image: Image.Image, distortion: str, severity: int, seed: int = 0) -> Image.Image:
    """``image`` with ``distortion`` at ``severity`` (1..5; 0 returns a copy). Noise draws from ``seed``."""
    if distortion not in LEVELS:
        raise ValueError(f"distortion must be one of {DISTORTIONS}, got {distortion!r}")
    if severity == 0:
        return image.copy()
    value = LEVELS[distortion][severity - 1]
    if distortion == "noise":
        pixels = np.asarray(image, dtype=np.float64)
        noisy = pixels + np.random.default_rng(seed).normal(0.0, value, pixels.shape)
        return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    if distortion == "compression":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(value))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if distortion == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=value))
    return ImageEnhance.Brightness(image).enhance(value)


@dataclass(frozen=True)
class QualitySpec:
    """Everything that determines the rows but their number; see :func:`build_q_insight` for the fields."""

    seed: int
    split: str
    image_size: int
    tasks: tuple[str, ...]
    distortions: tuple[str, ...]
    clean_fraction: float

    def __post_init__(self) -> None:
        for name, values, allowed in (("tasks", self.tasks, TASKS), ("distortions", self.distortions, DISTORTIONS)):
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}; got {values}")
        if not 0 <= self.clean_fraction < 1:
            raise ValueError(f"clean_fraction must be in [0, 1), got {self.clean_fraction}")
        if self.image_size < 48:
            raise ValueError(f"image_size must be >= 48 px to fit shapes; got {self.image_size}")

    def digest(self, *extra: object) -> str:
        blob = json.dumps(["q_insight", GENERATOR_VERSION, asdict(self), *extra], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _draw(self, rng, allow_clean: bool) -> tuple[str | None, int]:
        if allow_clean and rng.random() < self.clean_fraction:
            return None, 0
        return rng.choice(self.distortions), rng.randint(1, len(SEVERITIES))

    def row(self, index: int) -> dict:
        """Row ``index``: a pure function of the spec and the index."""
        rng = row_rng("vrl-q-insight", self.seed, self.split, index)
        task = rng.choice(self.tasks)
        scene = sample_scene(rng, rng.randint(*OBJECTS_BY_DIFFICULTY[2]), self.image_size)
        clean = render(scene)
        draws = [self._draw(rng, allow_clean=True) for _ in range(2 if task == "comparison" else 1)]
        images = [degrade(clean, kind or "noise", level, seed=rng.randrange(2**31)) for kind, level in draws]
        scores = [quality_score(level) for _, level in draws]
        if task == "score":
            prompt, answer, answer_type = f"<image>\n{SCORE_PROMPT}", f"{scores[0]:.2f}", "number"
        elif task == "dist":
            kind, level = draws[0]
            solution = {"distortion_class": kind or "null", "severity": SEVERITIES[level - 1] if kind else "null"}
            prompt, answer, answer_type = f"<image>\n{DIST_PROMPT}", json.dumps(solution), "text"
        else:
            better = "Similar" if scores[0] == scores[1] else ("Image A" if scores[0] > scores[1] else "Image B")
            prompt, answer, answer_type = f"Image A: <image>\nImage B: <image>\n{COMPARE_PROMPT}", better, "text"
        meta = {
            "distortions": [kind or "null" for kind, _ in draws],
            "severities": [level for _, level in draws],
            "scores": scores,
            "scene": scene.to_dict(),
            "seed": self.seed,
            "split": self.split,
            "index": index,
        }
        return {
            "prompt": prompt,
            "images": images,
            "answer": answer,
            "answer_type": answer_type,
            "task": task,
            "format": "open",
            "meta": json.dumps(meta, sort_keys=True),
            "uid": f"qi-{self.split}-{self.digest()[:8]}-{index:06d}",
        }


def build_q_insight(
    num_samples: int = 1000,
    seed: int = 0,
    split: str = "train",
    image_size: int = 112,
    tasks: tuple[str, ...] | list[str] = ("score", "dist"),
    distortions: tuple[str, ...] | list[str] = DISTORTIONS,
    clean_fraction: float = 0.0,
    mode: str = "materialize",
    cache_dir: str | None = None,
    progress: bool | None = None,
) -> datasets.Dataset | SyntheticStream:
    """Build the synthetic image-quality dataset (``data=q_insight``).

    Args:
        num_samples: number of rows.
        seed: base seed; usually the run's ``${seed}``.
        split: mixed into every row's seed (``val`` rows are independent draws).
        image_size: square image side in pixels.
        tasks: tasks drawn uniformly per row (``score``, ``dist``, ``comparison``); Q-Insight's multi-task run mixes
            score and dist, its comparison script trains comparison alone.
        distortions: the distortion kinds drawn from.
        clean_fraction: share of images left clean (score 5.0, distortion ``null``); 0 as KADIS (always distorted).
        mode: ``materialize`` (a ``datasets.Dataset``) or ``stream`` (rows rendered on access; the same rows).
        cache_dir: with ``materialize``, save under this folder by argument hash and reload; None: memory only.
        progress: progress bar while materialising; None shows one above 300 rows.
    """
    spec = QualitySpec(
        seed=int(seed),
        split=str(split),
        image_size=int(image_size),
        tasks=tuple(str(t) for t in tasks),
        distortions=tuple(str(d) for d in distortions),
        clean_fraction=float(clean_fraction),
    )
    return build_rows(spec, num_samples, mode, cache_dir, progress)  # type: ignore[arg-type]

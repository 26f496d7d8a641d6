"""Scene graphs for the synthetic visual tasks, and their PIL rendering.

A scene graph is the single source of truth of a synthetic row: every answer is computed from it, it is
stored in the row's ``meta`` (``to_dict``), and later methods derive their extra annotations from it
(Perception-R1 visual key facts, PEARL perception checklists, ViCrit captions with injected errors).
Two kinds exist: :class:`Scene` (flat shapes on a plain background) and :class:`Chart` (a bar chart).

All coordinates are integer pixels of the canvas the graph was sampled for. Boxes are
``(x1, y1, x2, y2)`` with *inclusive* corners: the tight extent of the pixels the shape paints. Drawing is
not anti-aliased, so every pixel of a shape has exactly its palette colour; that keeps the shapes crisp
for tiny vision towers and lets tests check boxes pixel by pixel.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageFont

#: Colour name -> RGB. Far apart in RGB so that tiny vision towers (and pixel tests) separate them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
}
#: Shape names; each has a distinct silhouette at a 6-8 px radius.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: Size name -> radius as a fraction of the canvas width (112 px -> 8 and 13 px).
SIZES: dict[str, float] = {"small": 0.07, "large": 0.12}
#: Bar-chart category names: short, one token each, easy to print under a narrow bar.
CATEGORIES: tuple[str, ...] = ("cat", "dog", "fox", "owl", "pig", "cow", "hen", "bee")

BACKGROUND = (255, 255, 255)
AXIS_COLOR = (0, 0, 0)
#: Largest bar value; values are integers 1..CHART_MAX so that a printed label is one digit.
CHART_MAX = 9
#: Free pixels kept between two shapes' boxes, so that no shape touches another.
GAP = 3


@dataclass(frozen=True)
class SceneObject:
    """One flat shape.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: a key of :data:`PALETTE`.
        size: one of :data:`SIZES` (the word a question may use).
        x: centre column in pixels.
        y: centre row in pixels.
        radius: half the side of the square the shape is inscribed in, in pixels.
    """

    shape: str
    color: str
    size: str
    x: int
    y: int
    radius: int

    def polygon(self) -> list[tuple[int, int]]:
        """Integer vertices of a polygonal shape (the circle has none), exactly as drawn."""
        x, y, r = self.x, self.y, self.radius
        if self.shape == "square":
            return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
        if self.shape == "triangle":
            return [(x, y - r), (x + r, y + r), (x - r, y + r)]
        if self.shape == "star":
            points = []
            for k in range(10):
                rk = r if k % 2 == 0 else 0.45 * r
                angle = math.pi * k / 5 - math.pi / 2
                points.append((round(x + rk * math.cos(angle)), round(y + rk * math.sin(angle))))
            return points
        return []

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Tight inclusive pixel box of the drawn shape."""
        points = self.polygon()
        if not points:
            return (self.x - self.radius, self.y - self.radius, self.x + self.radius, self.y + self.radius)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def name(self) -> str:
        """The unique description questions use, e.g. ``red circle``."""
        return f"{self.color} {self.shape}"

    def to_dict(self) -> dict:
        return {**asdict(self), "bbox": list(self.bbox)}


@dataclass(frozen=True)
class Scene:
    """Shapes on a plain background; (colour, shape) pairs are unique so ``the red circle`` is unambiguous."""

    width: int
    height: int
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        return {
            "kind": "shapes",
            "width": self.width,
            "height": self.height,
            "objects": [o.to_dict() for o in self.objects],
        }


@dataclass(frozen=True)
class Chart:
    """A vertical bar chart with one bar per category.

    Attributes:
        width: canvas width in pixels.
        height: canvas height in pixels.
        categories: bar names, left to right.
        values: integer bar heights in 1..:data:`CHART_MAX`, pairwise distinct so "tallest" is unique.
        colors: palette name of each bar.
        value_labels: print each value above its bar (reading the number instead of estimating a height).
    """

    width: int
    height: int
    categories: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[str, ...]
    value_labels: bool = True

    def bars(self) -> list[dict]:
        """One dict per bar with its category, value, colour and inclusive pixel box."""
        x0, y_base, slot, unit = _chart_frame(self.width, self.height, len(self.values))
        bar_w = max(2, int(slot * 0.6))
        out = []
        for k, (cat, value, color) in enumerate(zip(self.categories, self.values, self.colors)):
            left = x0 + k * slot + (slot - bar_w) // 2
            top = y_base - round(value * unit)
            box = [left, top, left + bar_w - 1, y_base - 1]
            out.append({"category": cat, "value": value, "color": color, "bbox": box})
        return out

    def to_dict(self) -> dict:
        return {
            "kind": "bar_chart",
            "width": self.width,
            "height": self.height,
            "categories": list(self.categories),
            "values": list(self.values),
            "colors": list(self.colors),
            "value_labels": self.value_labels,
            "bars": self.bars(),
        }


def from_dict(d: dict) -> Scene | Chart:
    """Rebuild a graph from :meth:`Scene.to_dict` / :meth:`Chart.to_dict` (derived keys are ignored)."""
    if d["kind"] == "bar_chart":
        return Chart(
            width=d["width"],
            height=d["height"],
            categories=tuple(d["categories"]),
            values=tuple(d["values"]),
            colors=tuple(d["colors"]),
            value_labels=d["value_labels"],
        )
    keys = ("shape", "color", "size", "x", "y", "radius")
    objects = tuple(SceneObject(**{k: o[k] for k in keys}) for o in d["objects"])
    return Scene(width=d["width"], height=d["height"], objects=objects)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def sample_scene(
    rng: random.Random,
    num_objects: int,
    size: int = 112,
    unique: str = "pair",
    colors: tuple[str, ...] | None = None,
    max_tries: int = 200,
    radius_fraction: float | None = None,
) -> Scene:
    """Place up to ``num_objects`` non-overlapping shapes by rejection sampling.

    Args:
        rng: the row's generator; the scene depends on nothing else, so rows are reproducible.
        num_objects: how many shapes to try to place.
        size: square canvas side in pixels.
        unique: which attribute no two objects share: ``pair`` (colour+shape, so ``the red circle`` is
            unique), ``shape`` (``the circle`` is unique, for colour questions) or ``color`` (``the red
            object`` is unique, for shape questions). It also caps the count at the number of values.
        colors: palette names to draw from (default: all of :data:`PALETTE`).
        max_tries: placement attempts per object. An object that finds no free spot is dropped, so a
            crowded scene can hold fewer objects than asked; answers are always computed from the result.
        radius_fraction: fixed radius as a fraction of the canvas (size name ``large``) instead of the
            :data:`SIZES` draw; used to make one shape dominate the image.

    Returns:
        The scene, objects in placement order.
    """
    colors = tuple(colors or PALETTE)
    combos = [(c, s) for c in colors for s in SHAPES]
    rng.shuffle(combos)
    used: set[str] = set()
    objects: list[SceneObject] = []
    for color, shape in combos:
        if len(objects) == num_objects:
            break
        key = {"pair": f"{color} {shape}", "shape": shape, "color": color}[unique]
        if key in used:
            continue
        size_name = rng.choice(list(SIZES)) if radius_fraction is None else "large"
        radius = max(3, round((radius_fraction or SIZES[size_name]) * size))
        for _ in range(max_tries):
            x = rng.randint(radius + 2, size - radius - 3)
            y = rng.randint(radius + 2, size - radius - 3)
            obj = SceneObject(shape, color, size_name, x, y, radius)
            if not any(_overlaps(obj.bbox, o.bbox, GAP) for o in objects):
                objects.append(obj)
                used.add(key)
                break
    return Scene(width=size, height=size, objects=tuple(objects))


def sample_chart(rng: random.Random, num_bars: int, size: int = 112, value_labels: bool = True) -> Chart:
    """A bar chart with ``num_bars`` distinct categories, distinct colours and distinct values.

    Distinct values make "which bar is tallest" unique; at most :data:`CHART_MAX` bars fit, and at most
    as many as there are palette colours (default 6).

    Args:
        rng: the row's generator.
        num_bars: number of bars.
        size: square canvas side in pixels.
        value_labels: print each value above its bar.

    Returns:
        The chart.
    """
    num_bars = min(num_bars, len(PALETTE), len(CATEGORIES))
    return Chart(
        width=size,
        height=size,
        categories=tuple(rng.sample(CATEGORIES, num_bars)),
        values=tuple(rng.sample(range(1, CHART_MAX + 1), num_bars)),
        colors=tuple(rng.sample(list(PALETTE), num_bars)),
        value_labels=value_labels,
    )


def _chart_frame(width: int, height: int, num_bars: int) -> tuple[int, int, int, float]:
    """Plot-area geometry: left x, baseline y, slot width per bar, pixels per value unit."""
    pad = max(8, height // 8)  # room for one line of text above the bars and below the axis
    x0, y_base = max(4, width // 16), height - pad
    slot = (width - x0 - 2) // max(1, num_bars)
    unit = (y_base - pad) / CHART_MAX
    return x0, y_base, slot, unit


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, height // 11))


def _render_chart(chart: Chart) -> Image.Image:
    img = Image.new("RGB", (chart.width, chart.height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    x0, y_base, _, _ = _chart_frame(chart.width, chart.height, len(chart.values))
    font = _font(chart.height)
    draw.line([(x0 - 1, 2), (x0 - 1, y_base)], fill=AXIS_COLOR)
    draw.line([(x0 - 1, y_base), (chart.width - 2, y_base)], fill=AXIS_COLOR)
    for bar in chart.bars():
        x1, y1, x2, y2 = bar["bbox"]
        draw.rectangle([x1, y1, x2, y2], fill=PALETTE[bar["color"]])
        centre = (x1 + x2 + 1) / 2
        draw.text((centre, y_base + 2), bar["category"], fill=AXIS_COLOR, font=font, anchor="mt")
        if chart.value_labels:
            draw.text((centre, y1 - 1), str(bar["value"]), fill=AXIS_COLOR, font=font, anchor="mb")
    return img


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    fill = PALETTE[obj.color]
    if obj.shape == "circle":
        draw.ellipse(list(obj.bbox), fill=fill)
    else:
        draw.polygon(obj.polygon(), fill=fill)


def render(graph: Scene | Chart, size: int | None = None) -> Image.Image:
    """Draw a scene or chart as an RGB image.

    Args:
        graph: what to draw.
        size: output side in pixels. ``None`` (the default, and what the datasets use) draws at the
            graph's own canvas size so that boxes in the graph are the answer's pixel coordinates; another
            value resizes the drawing with nearest-neighbour sampling, keeping colours exact, and boxes
            must then be scaled by ``size / graph.width``.

    Returns:
        A new ``RGB`` image.
    """
    if isinstance(graph, Chart):
        img = _render_chart(graph)
    else:
        img = Image.new("RGB", (graph.width, graph.height), BACKGROUND)
        draw = ImageDraw.Draw(img)
        for obj in graph.objects:
            _draw_object(draw, obj)
    if size is not None and size != graph.width:
        img = img.resize((size, round(size * graph.height / graph.width)), Image.Resampling.NEAREST)
    return img

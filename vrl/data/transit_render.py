"""Transit-map layouts and their PIL rendering: the picture side of :mod:`vrl.data.transit`.

A layout decides where lines run and what stations are called. Stations sit on a ``grid x grid`` lattice and
each line is a self-avoiding walk over it that mostly goes straight. Two lines never share a track segment, so
wherever two lines meet they meet at a lattice node, which is then a station of both (a **transfer**): the
picture cannot show a crossing that the graph does not have. Every line after the first meets an earlier one,
so the network is connected and every pair of stations has a route.

Rendering: lines are thick coloured polylines, ordinary stations white dots ringed in their line's colour,
transfer stations larger white dots ringed in black, every station labelled with its name, and a legend
maps colours to line names. Station names are short syllable pairs (``Kamor``) so labels fit at 224 px; ``tiny``
maps draw theirs from a fixed pool of 16 (:data:`TINY_STATIONS`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageFont

#: Difficulty labels, as in ReasonMap's ``difficulty_city`` (the default mix). ``tiny`` (ours, not in ReasonMap) is
#: asked for by name: 2-3 lines of 2-3 stations on a 3 x 3 grid, maps a tiny model can answer about
#: (conf/data/transit_tiny.yaml).
DIFFICULTIES = ("easy", "middle", "hard")
LEVEL_NAMES = ("tiny", *DIFFICULTIES)
#: Line colour name -> RGB; far apart so a line is identifiable by colour alone. Lines are named "<Colour> Line".
LINE_COLORS: dict[str, tuple[int, int, int]] = {
    "Red": (220, 40, 40),
    "Blue": (40, 80, 220),
    "Green": (40, 160, 60),
    "Orange": (245, 130, 30),
    "Purple": (140, 60, 190),
    "Brown": (140, 90, 40),
    "Pink": (230, 90, 170),
    "Teal": (20, 150, 150),
}
#: Station names of ``tiny`` maps: a fixed pool, so a tiny tokenizer can make each name one token
#: (:func:`vrl.data.transit.single_token_words`) and a route's endpoints are one token to copy from the question.
TINY_STATIONS = ("Bilo", "Desan", "Furar", "Gemin", "Hulas", "Kamor", "Kugun", "Lirpo",
                 "Monet", "Nadir", "Pastul", "Rergo", "Sivan", "Tovel", "Vunor", "Zelda")  # fmt: skip
_ONSETS = "bdfghklmnprstvz"
_VOWELS = "aeiou"
_CODAS = ["", "", "n", "r", "l", "s"]
_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))
#: Probability that a line turns at a station (when it can), so lines are mostly straight with a bend or two.
TURN_PROB = 0.3
#: Attempts at one line before the whole map is redrawn, and at a whole map before giving up.
LINE_TRIES, MAP_TRIES = 200, 100


@dataclass(frozen=True)
class Level:
    """How big a map of one difficulty is.

    Attributes:
        grid: stations sit on a ``grid x grid`` lattice.
        lines: (min, max) number of lines.
        stations: (min, max) stations per line.
    """

    grid: int
    lines: tuple[int, int]
    stations: tuple[int, int]


LEVELS = {
    "tiny": Level(grid=3, lines=(2, 3), stations=(2, 3)),
    "easy": Level(grid=4, lines=(2, 3), stations=(3, 5)),
    "middle": Level(grid=5, lines=(3, 4), stations=(4, 6)),
    "hard": Level(grid=6, lines=(4, 5), stations=(5, 7)),
}


@dataclass(frozen=True)
class TransitMap:
    """A transit network: the single source of truth of a row (answers, rendering and reward read it).

    Attributes:
        lines: line name -> station names in travel order (the city JSON of ReasonMap, without markers).
        colors: line name -> key of :data:`LINE_COLORS`.
        nodes: station name -> (column, row) on the grid.
        grid: lattice side.
        difficulty: ``easy`` | ``middle`` | ``hard``.
    """

    lines: dict[str, list[str]]
    colors: dict[str, str]
    nodes: dict[str, tuple[int, int]]
    grid: int
    difficulty: str

    def lines_at(self, station: str) -> list[str]:
        """Lines through ``station``, in map order."""
        return [name for name, stops in self.lines.items() if station in stops]

    def stations(self) -> list[str]:
        return sorted(self.nodes)

    def transfer_stations(self) -> list[str]:
        return [s for s in self.stations() if len(self.lines_at(s)) > 1]

    def to_dict(self) -> dict:
        return {**asdict(self), "nodes": {k: list(v) for k, v in self.nodes.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> TransitMap:
        return cls(d["lines"], d["colors"], {k: tuple(v) for k, v in d["nodes"].items()}, d["grid"], d["difficulty"])


def station_name(rng: random.Random) -> str:
    """A pronounceable two-syllable name (``Kamor``): short enough to label a dot, one token-ish per syllable."""
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2)).capitalize()


def sample_map(rng: random.Random, difficulty: str) -> TransitMap:
    """Draw a connected map of ``difficulty``: every line shares at least one station with an earlier one."""
    level = LEVELS[difficulty]
    for _ in range(MAP_TRIES):
        paths: list[list[tuple[int, int]]] = []
        for _ in range(rng.randint(*level.lines)):
            path = _sample_line(rng, level, paths)
            if path is None:
                break
            paths.append(path)
        else:
            return _name_map(rng, paths, level.grid, difficulty)
    raise RuntimeError(f"could not draw a {difficulty} transit map in {MAP_TRIES} tries")


def _sample_line(rng: random.Random, level: Level, others: list[list[tuple[int, int]]]) -> list | None:
    """A grid walk sharing no track segment with ``others`` and (after the first) crossing one of them."""
    used_nodes = {n for p in others for n in p}
    used_edges = {frozenset(e) for p in others for e in itertools.pairwise(p)}
    for _ in range(LINE_TRIES):
        path = _walk(rng, level.grid, rng.randint(*level.stations))
        if len(path) < level.stations[0]:
            continue
        if any(frozenset(e) in used_edges for e in itertools.pairwise(path)):
            continue
        if others and not used_nodes.intersection(path):
            continue
        return path
    return None


def _walk(rng: random.Random, grid: int, length: int) -> list[tuple[int, int]]:
    """A self-avoiding walk of up to ``length`` lattice nodes that mostly goes straight."""
    node = (rng.randrange(grid), rng.randrange(grid))
    heading = rng.choice(_DIRECTIONS)
    path = [node]
    while len(path) < length:
        turns = [d for d in _DIRECTIONS if d[0] * heading[0] + d[1] * heading[1] == 0]
        rng.shuffle(turns)
        options = [*turns, heading] if rng.random() < TURN_PROB else [heading, *turns]
        for d in options:
            nxt = (node[0] + d[0], node[1] + d[1])
            if 0 <= nxt[0] < grid and 0 <= nxt[1] < grid and nxt not in path:
                node, heading = nxt, d
                path.append(nxt)
                break
        else:
            break
    return path


def _name_map(rng: random.Random, paths: list[list[tuple[int, int]]], grid: int, difficulty: str) -> TransitMap:
    nodes = sorted({n for p in paths for n in p})
    if difficulty == "tiny":  # at most 9 stations: distinct names from the pool
        names = dict(zip(nodes, rng.sample(TINY_STATIONS, len(nodes))))
    else:
        names: dict[tuple[int, int], str] = {}
        for node in nodes:
            name = station_name(rng)
            while name in names.values():
                name = station_name(rng)
            names[node] = name
    colors = rng.sample(sorted(LINE_COLORS), len(paths))
    lines = {f"{c} Line": [names[n] for n in p] for c, p in zip(colors, paths)}
    return TransitMap(lines, {f"{c} Line": c for c in colors}, {v: k for k, v in names.items()}, grid, difficulty)


BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(7, size // 28))


def node_pixels(tmap: TransitMap, size: int) -> dict[str, tuple[int, int]]:
    """Station -> pixel centre: the grid spread over the area above the legend, with room for labels."""
    left, top = round(0.07 * size), round(0.1 * size)
    right, bottom = size - round(0.2 * size), size - _legend_height(tmap, size) - round(0.05 * size)
    step_x, step_y = (right - left) / (tmap.grid - 1), (bottom - top) / (tmap.grid - 1)
    return {s: (round(left + c * step_x), round(top + r * step_y)) for s, (c, r) in tmap.nodes.items()}


def _legend_height(tmap: TransitMap, size: int) -> int:
    rows = -(-len(tmap.lines) // 2)
    return rows * (_font(size).size + 3) + 4


def render_map(tmap: TransitMap, size: int = 224) -> Image.Image:
    """Draw ``tmap`` as a ``size x size`` RGB image (lines, stations, labels, legend)."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font, xy = _font(size), node_pixels(tmap, size)
    width, r = max(2, size // 64), max(2, size // 64)
    for name, stops in tmap.lines.items():
        draw.line([xy[s] for s in stops], fill=LINE_COLORS[tmap.colors[name]], width=width, joint="curve")
    transfers = set(tmap.transfer_stations())
    for station, (x, y) in sorted(xy.items()):
        if station in transfers:
            draw.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], fill=BACKGROUND, outline=INK, width=2)
        else:
            ring = LINE_COLORS[tmap.colors[tmap.lines_at(station)[0]]]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=BACKGROUND, outline=ring, width=1)
    for station, (x, y) in sorted(xy.items()):
        draw.text((x + r + 1, y - r), station, fill=INK, font=font, anchor="ls", stroke_width=1, stroke_fill=BACKGROUND)
    _draw_legend(draw, tmap, size, font)
    return img


def _draw_legend(draw: ImageDraw.ImageDraw, tmap: TransitMap, size: int, font) -> None:
    """Two columns of colour swatch + line name along the bottom edge."""
    row_h = font.size + 3
    y0 = size - _legend_height(tmap, size) + 2
    for k, name in enumerate(tmap.lines):
        x, y = 4 + (k % 2) * (size // 2), y0 + (k // 2) * row_h
        draw.rectangle([x, y + 2, x + row_h - 2, y + row_h - 2], fill=LINE_COLORS[tmap.colors[name]])
        draw.text((x + row_h + 2, y + row_h - 2), name, fill=INK, font=font, anchor="ls")

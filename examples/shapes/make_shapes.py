"""Write the example dataset in this folder: ``train.jsonl`` (image paths) and ``val.parquet`` (image bytes).

Both files use the RLVR row schema that ``data=rlvr_local`` reads (README "Training on your own data"):
``problem`` (question text, one ``<image>`` per image), ``answer``, ``images``, and optionally ``answer_type``
(how accuracy grades the row) and ``id``. Run from anywhere: ``python examples/shapes/make_shapes.py``.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}
SIZE = 56  # 56x56 px: 4 image tokens for the tiny model (patch 14, merge 2)


def draw(colour: str, count: int, rng: random.Random) -> Image.Image:
    """``count`` filled circles of one colour on white, side by side."""
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    radius = 9 if count > 1 else 18
    for i in range(count):
        cx = SIZE * (i + 1) // (count + 1)
        cy = SIZE // 2 + rng.randint(-4, 4)
        pen.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=COLOURS[colour])
    return image


def row(i: int, split: str, rng: random.Random) -> tuple[dict, Image.Image]:
    """One question about one image; the four answer types below cycle through the rows."""
    colour, count = rng.choice(sorted(COLOURS)), rng.randint(1, 3)
    kind = i % 4
    if kind == 0:
        problem, answer, answer_type = "<image>\nWhat colour are the shapes?", colour, "text"
    elif kind == 1:
        asked = rng.choice(sorted(COLOURS))
        problem, answer, answer_type = f"<image>\nAre the shapes {asked}?", "yes" if asked == colour else "no", "yesno"
    elif kind == 2:
        problem, answer, answer_type = "<image>\nHow many shapes are there?", str(count), "number"
    else:  # no <image> placeholder: the image is put before the text
        letters = dict(zip("ABC", sorted(COLOURS)))
        options = " ".join(f"{k}. {v}" for k, v in letters.items())
        answer = next(k for k, v in letters.items() if v == colour)
        problem, answer_type = f"Which colour are the shapes? {options}", "choice"
    return {"id": f"{split}-{i}", "problem": problem, "answer": answer, "answer_type": answer_type}, draw(
        colour, count, rng
    )


def main() -> None:
    rng = random.Random(0)
    (HERE / "images").mkdir(exist_ok=True)
    with open(HERE / "train.jsonl", "w") as out:
        for i in range(48):
            record, image = row(i, "train", rng)
            image.save(HERE / "images" / f"{record['id']}.png")
            record["images"] = [f"images/{record['id']}.png"]  # relative to the data file's folder
            out.write(json.dumps(record) + "\n")
    import datasets

    val = []
    for i in range(16):
        record, image = row(i, "val", rng)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        val.append({**record, "images": [{"bytes": buffer.getvalue(), "path": None}]})  # bytes in the file
    features = datasets.Features(
        {k: datasets.Value("string") for k in ("id", "problem", "answer", "answer_type")}
        | {"images": datasets.List(datasets.Image())}
    )
    datasets.Dataset.from_list(val, features=features).to_parquet(str(HERE / "val.parquet"))


if __name__ == "__main__":
    main()

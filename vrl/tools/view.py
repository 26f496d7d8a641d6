"""What the rollout table shows of a multi-turn trajectory: the prompt image with every requested box drawn on
it, the last image a tool returned, and a transcript of the turns (calls, errors, observations)."""

from __future__ import annotations

from PIL import Image, ImageDraw

#: Box colours in call order (valid calls); invalid calls draw nothing (their error is in the transcript).
COLOURS = ("#ff2d2d", "#2d7dff", "#20c040", "#ffb000", "#c040ff")


def boxed_image(sample: dict) -> Image.Image | None:
    """The prompt's first image with each valid call's box (original pixels, source image 0) drawn, numbered."""
    images = sample.get("images") or []
    if not images:
        return None
    out = images[0].convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 200))
    calls = [t for t in sample.get("turns") or [] if t.get("box") is not None and not t.get("source")]
    for k, turn in enumerate(calls):
        x1, y1, x2, y2 = turn["box"]
        colour = COLOURS[k % len(COLOURS)]
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=width)
        draw.text((x1 + width + 1, y1 + width), str(k + 1), fill=colour)
    return out


def transcript(sample: dict) -> str:
    """One line per turn: the policy's text, then what came back (``-> error: ...`` or ``-> N image(s)``)."""
    lines = []
    for k, turn in enumerate(sample.get("turns") or []):
        lines.append(f"[{k + 1}] {turn['text']}")
        if "error" in turn:
            lines.append(f"  -> error: {turn['error']}")
        elif turn.get("tool"):
            lines.append(f"  -> {turn.get('tool')}: {turn.get('images', 0)} image(s), box {turn.get('box')}")
    lines.append(f"(stop: {sample.get('stop', '')})")
    return "\n".join(lines)

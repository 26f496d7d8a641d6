"""CogFlow's perception rewards on small hand-made line sets: fitting, gates, assignment, F1; VSR render-and-compare."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vrl.data.geometry import build_geometry, render_primitives
from vrl.methods.cogflow import (
    CogFlowFormat,
    VPRReward,
    VSRReward,
    fit_line,
    pair_cost,
    parse_watching,
    vpr,
)

H = [[0.0, 0.0], [1.0, 0.0]]  # ground truth: a horizontal and a vertical unit segment
V = [[0.0, 0.0], [0.0, 1.0]]


def test_fit_line_normalises_and_handles_verticals():
    abc, ends = fit_line([[0, 1], [1, 2], [2, 3]])  # y = x + 1 -> (1, -1, 1) / sqrt(2)
    assert np.allclose(abc, np.array([1, -1, 1]) / math.sqrt(2)) and ends.tolist() == [[0, 1], [2, 3]]
    assert np.allclose(fit_line([[0.5, 0], [0.5, 1]])[0], [1, 0, -0.5])  # x = 0.5
    assert np.allclose(fit_line([[0, 0.1], [1, 0.1]])[0], [0, 1, -0.1])  # A = 0: B > 0, y - 0.1 = 0


def test_pair_costs_by_hand():
    # y = 0.1 vs y = 0: dtheta 0, |dC| 0.1, IoU along x [0, 1] vs [0, 1] = 1, Hausdorff 0.1 -> 0.2
    assert pair_cost([[0, 0.1], [1, 0.1]], H) == pytest.approx(0.2)
    # x = 0.5 vs x = 0 over the same span: 0 + 0.5 + 0 + 0.5 = 1.0
    assert pair_cost([[0.5, 0], [0.5, 1]], V) == pytest.approx(1.0)
    # half overlap along the gt: [0.5, 1.5] vs [0, 1] -> IoU 0.5/1.5 = 1/3; cost 0 + 0 + 2 (2/3) + Hausdorff 0.5
    assert pair_cost([[0.5, 0], [1.5, 0]], H) == pytest.approx(4 / 3 + 0.5)
    assert pair_cost([[2, 0], [3, 0]], H) == 1e6  # no overlap along the gt (IoU 0 < 0.2)
    assert pair_cost([[0, 0], [1, 0]], V) == 1e6  # 90 degrees apart
    five, seven = (math.radians(d) for d in (5, 7))
    assert pair_cost([[0, 0], [math.cos(five), math.sin(five)]], H) < 1e5  # 5 deg passes the 6 deg gate
    assert pair_cost([[0, 0], [math.cos(seven), math.sin(seven)]], H) == 1e6


def test_vpr_f1_on_two_small_line_sets():
    pred = [[[0, 0.1], [1, 0.1]], [[0.5, 0], [0.5, 1]], [[0, 0], [1, 1]]]  # matches H, matches V, a 45 deg extra
    # TP = 2 (costs 0.2 and 1.0; the diagonal is gated against both): P = 2/3, R = 2/2, F1 = 2 (2/3) / (5/3) = 0.8
    assert vpr(pred, [H, V]) == pytest.approx(0.8)
    assert vpr(pred[::-1], [V, H]) == pytest.approx(0.8)  # order-free: the assignment is optimal
    assert vpr([[[0, 0.1], [1, 0.1]]], [H, V]) == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 1, R 1/2 -> 2/3
    assert vpr([], []) == 1.0 and vpr([], [H]) == 0.0 and vpr(pred, []) == 0.0
    assert vpr([[[0, 10], [100, 10]]], [[[0, 0], [100, 0]]], scale=100) == pytest.approx(1.0)  # 0.2 < 1e5 in /100


def test_parse_watching_and_the_format():
    block = "Point: A: (1, 2) B: (3.5, 4)\nLine: (1, 2) -- (3.5, 4) -- (6, 6)\nLine: (0, 0)\nCircle: (5, 5, 2) (1,1,1)"
    got = parse_watching(block)
    assert got == {
        "points": {"A": [1.0, 2.0], "B": [3.5, 4.0]},
        "lines": [[[1.0, 2.0], [3.5, 4.0], [6.0, 6.0]]],  # the one-point "line" is skipped
        "circles": [[5.0, 5.0, 2.0], [1.0, 1.0, 1.0]],
    }
    fmt = CogFlowFormat()
    ok = "<WATCHING>x</WATCHING>\n<THINKING>y</THINKING>\n<ANSWER>2</ANSWER>"
    assert fmt([ok, ok.replace("<THINKING>y</THINKING>", ""), "pre " + ok], [{}] * 3) == [1.0, 0.0, 0.0]


def _watching(prims) -> str:
    lines = [f"Line: ({a[0]}, {a[1]}) -- ({b[0]}, {b[1]})" for a, b in prims["lines"]]
    circles = [f"Circle: ({c[0]}, {c[1]}, {c[2]})" for c in prims["circles"]]
    points = "Point: " + " ".join(f"{k}: ({x}, {y})" for k, (x, y) in prims["points"].items())
    return "\n".join([points, *lines, *circles])


def test_visual_terms_on_a_synthetic_diagram():
    row = build_geometry(num_samples=3, seed=0, image_size=112)[2]
    prims = json.loads(row["primitives"])
    exact = f"<WATCHING>{_watching(prims)}</WATCHING><THINKING>t</THINKING><ANSWER>{row['answer']}</ANSWER>"
    moved = exact.replace("Line: (", "Line: (3")  # every segment's start moved right by 30+ pixels
    vsr, vpr_term = VSRReward(), VPRReward()
    assert vpr_term([exact], [row]) == [1.0]
    assert vsr([exact], [row])[0] == pytest.approx(1.0, abs=1e-9)  # a perfect perception re-renders the diagram
    assert vsr([moved], [row])[0] < 1.0
    assert vsr(["<WATCHING>" + _watching(prims) + "</WATCHING>"], [row]) == [0.0]  # format fails: 0 (published)
    assert VSRReward(require_format=False)(["<WATCHING>" + _watching(prims)], [row])[0] == pytest.approx(1.0)
    assert render_primitives(prims, 112).tobytes() == row["images"][0].tobytes()


def test_geometry_rows_are_reproducible_and_answerable():
    a, b = build_geometry(num_samples=4, seed=1), build_geometry(num_samples=4, seed=1)
    assert [r["primitives"] for r in a] == [r["primitives"] for r in b]
    for row in a:
        prims = json.loads(row["primitives"])
        kind = "lines" if "segments" in row["prompt"] else "circles"
        assert row["answer"] == str(len(prims[kind])) and row["answer_type"] == "number"
    with pytest.raises(ValueError, match="tasks"):
        build_geometry(num_samples=1, tasks=["angles"])


def test_clip_similarity_is_half_cos_plus_one_of_the_image_embeddings():
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from vrl.methods.cogflow import ClipSimilarity

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    sim = ClipSimilarity(model, processor)
    rows = build_geometry(num_samples=2, image_size=56)
    a, b = rows[0]["images"][0], rows[1]["images"][0]
    pixels = processor(images=[a, b], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    emb = getattr(out, "pooler_output", out)
    cos = float(torch.dot(emb[0], emb[1]) / (emb[0].norm() * emb[1].norm()))
    assert sim(a, b) == pytest.approx((cos + 1) / 2, abs=1e-6) and sim(a, a) == pytest.approx(1.0, abs=1e-6)
    prims = json.loads(rows[0]["primitives"])
    exact = f"<WATCHING>{_watching(prims)}</WATCHING><THINKING>t</THINKING><ANSWER>1</ANSWER>"
    assert VSRReward(similarity=sim)([exact], [rows[0]])[0] == pytest.approx(1.0, abs=1e-6)  # identical render

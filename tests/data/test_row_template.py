"""Text written from a row's fields: format keywords, JSON fields read by index, errors naming row and key."""

from __future__ import annotations

import pytest

from vrl.data.row_template import check_template, fill


def test_fill_reads_json_fields_by_index_and_keeps_doubled_braces_literal():
    row = {"answer": "3", "meta": '{"objects": [{"shape": "star"}, {"shape": "circle"}]}', "images": [object()]}
    # meta is parsed: objects[1].shape is "circle"; {{ }} are literal braces around the answer
    assert fill("a {meta[objects][1][shape]}: \\boxed{{{answer}}}", row) == "a circle: \\boxed{3}"
    assert fill("{meta}", row, json_fields=()) == row["meta"]  # not parsed: the JSON text itself
    with pytest.raises(ValueError, match="images"):  # images are never a template field
        fill("{images}", {**row, "uid": "u1"})
    with pytest.raises(ValueError, match=r"my.key: row u1 has no 'colour'"):
        fill("{meta[objects][0][colour]}", {**row, "uid": "u1"}, key="my.key")


def test_check_template_names_the_config_key():
    check_template("{answer}", "k")
    with pytest.raises(ValueError, match="k names no row field"):
        check_template("plain text", "k")
    with pytest.raises(ValueError, match="k is not a format string"):
        check_template("{answer", "k")

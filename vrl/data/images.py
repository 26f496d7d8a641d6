"""Image references in RLVR rows: storing, resolving inside the data root, opening and verifying.

Shared by the loader (:mod:`vrl.data.rlvr`, which stores references) and the preflight pass
(:mod:`vrl.data.preflight`, which opens every image); split out so each module keeps one responsibility.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, ImageOps

from vrl.data.reasons import (  # noqa: F401 - re-exported: the reasons found here (the table: vrl.data.reasons)
    BAD_IMAGE_REF,
    BAD_TYPE,
    CORRUPT_IMAGE,
    LOAD_ERRORS_KEY,
    MISSING_IMAGE,
    NOT_A_FILE,
    PATH_ESCAPES_ROOT,
    SOURCE_KEY,
)


class BadImage(ValueError):
    """An image reference that cannot be stored or opened; ``reason`` is one of the reasons above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def image_storage(ref: Any, root: Path) -> dict[str, Any]:
    """One image reference -> the ``{"bytes", "path"}`` struct a ``datasets.Image`` feature stores.

    Paths are resolved (symlinks included) inside ``root``; bytes are kept as they are (a corrupt image is
    the preflight's finding, not the loader's).

    Raises:
        BadImage: the path escapes ``root``, or the reference is of no known kind.
    """
    if isinstance(ref, Image.Image):
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(ref), "path": None}
    if isinstance(ref, dict):
        data, label = ref.get("bytes"), ref.get("path")
        if data:
            return {"bytes": bytes(data), "path": label if isinstance(label, str) else None}
        if isinstance(label, str) and label:
            return image_storage(label, root)
        raise BadImage(BAD_IMAGE_REF, "image dict has neither bytes nor a path")
    if isinstance(ref, str):
        _check_path_text(ref)
        if ref.startswith("data:"):
            return {"bytes": _data_uri_bytes(ref), "path": None}
        if "://" in ref:
            raise BadImage(BAD_IMAGE_REF, f"{ref[:80]!r} is a URL; vrl reads local files only")
        return {"bytes": None, "path": str(resolve_inside(ref, root))}
    raise BadImage(BAD_IMAGE_REF, f"unsupported image reference of type {type(ref).__name__}")


def resolve_inside(ref: str, root: Path) -> Path:
    """``ref`` (relative to ``root``, or absolute) with symlinks resolved; it must lie inside ``root``.

    ``root`` must itself be resolved (``os.path.realpath``), or a symlinked root would reject everything.
    """
    _check_path_text(ref)
    try:
        candidate = Path(ref).expanduser()
        full = Path(os.path.realpath(candidate if candidate.is_absolute() else root / candidate))
    except (OSError, ValueError, RuntimeError) as err:  # e.g. a symlink loop, a name the OS rejects
        raise BadImage(BAD_IMAGE_REF, f"{ref[:200]!r}: {type(err).__name__}: {err}") from err
    if not full.is_relative_to(root):
        raise BadImage(PATH_ESCAPES_ROOT, f"{ref!r} resolves to {full}, outside the data root {root}")
    return full


def open_image(ref: Any) -> Image.Image:
    """Open, verify and fully decode one stored image, rotated by its EXIF tag as ``datasets.Image`` does.

    A path is checked with ``stat`` before it is opened: opening a named pipe would block until something
    writes to it, i.e. forever, so anything but a regular file is bad (:data:`NOT_A_FILE`).

    Raises:
        BadImage: a missing file, a path that is not a regular file, undecodable data, or a reference of no
            known kind.
    """
    if isinstance(ref, Image.Image):
        data, path = None, None
    elif isinstance(ref, dict):
        data, path = ref.get("bytes"), ref.get("path")
    elif isinstance(ref, (bytes, bytearray)):
        data, path = bytes(ref), None
    elif isinstance(ref, str):
        data, path = None, ref
    else:
        raise BadImage(BAD_IMAGE_REF, f"unsupported image reference of type {type(ref).__name__}")
    if not isinstance(ref, Image.Image) and data is None and not path:
        raise BadImage(BAD_IMAGE_REF, "image has neither bytes nor a path")
    if data is None and path:
        _check_regular_file(path)
    try:
        if isinstance(ref, Image.Image):  # already opened (rows built in Python): decode it, nothing more
            ref.load()
            return ref
        with Image.open(io.BytesIO(data) if data is not None else path) as probe:
            probe.verify()  # checks structure (e.g. PNG CRCs) that decoding alone would not
        image = Image.open(io.BytesIO(data) if data is not None else path)  # verify() leaves it unusable
        image.load()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        raise BadImage(MISSING_IMAGE, f"{path}: {err.strerror or err}") from err
    except Exception as err:  # PIL raises many types on bad data (OSError, SyntaxError, struct.error, ...)
        where = path if data is None else f"{len(data)} bytes"
        raise BadImage(CORRUPT_IMAGE, f"{where}: {type(err).__name__}: {err}") from err
    if image.getexif().get(Image.ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)
    return image


def without_image_decoding(feature: Any) -> Any:
    """``feature`` with every ``datasets.Image`` inside switched to ``decode=False`` (the stored struct)."""
    if isinstance(feature, datasets.Image):
        return replace(feature, decode=False)
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return replace(feature, feature=without_image_decoding(feature.feature))
    if isinstance(feature, dict):
        return type(feature)({k: without_image_decoding(v) for k, v in feature.items()})
    return feature


def _check_path_text(ref: str) -> None:
    """A path with a NUL byte makes every OS call raise ``ValueError``: one bad row, not a failed load."""
    if "\x00" in ref:
        raise BadImage(BAD_IMAGE_REF, f"{ref[:200]!r} contains a NUL byte")


def _check_regular_file(path: str) -> None:
    """Raise unless ``path`` is a regular file (``stat`` follows symlinks and never blocks, unlike ``open``)."""
    if not isinstance(path, str):
        raise BadImage(BAD_IMAGE_REF, f"image path is {type(path).__name__}, not text")
    _check_path_text(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
        raise BadImage(MISSING_IMAGE, f"{path}: {err.strerror or err}") from err
    except (OSError, ValueError) as err:
        raise BadImage(MISSING_IMAGE, f"{path}: {type(err).__name__}: {err}") from err
    if not stat.S_ISREG(mode):
        kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket"}
        kind = next((name for test, name in kinds.items() if test(mode)), "a device or special file")
        raise BadImage(NOT_A_FILE, f"{path} is {kind}, not a regular file")


def _data_uri_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64"):
        raise BadImage(BAD_IMAGE_REF, f"data URI {header[:40]!r} is not base64")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadImage(BAD_IMAGE_REF, f"data URI payload is not valid base64: {err}") from err

"""Why a data row is bad: the reason codes the loader and the preflight write, what each means, what to do.

One table for both sides: the loader (:mod:`vrl.data.rlvr`, :mod:`vrl.data.json_rows`, :mod:`vrl.data.images`)
records what it sees in a row's ``meta``, the preflight (:mod:`vrl.data.preflight`) finds the rest, and the
report and the one-line error name the code, its detail and the fix below.
"""

from __future__ import annotations

from vrl.sampler.prompts import IMAGE_PLACEHOLDER
from vrl.types import ANSWER_TYPES

#: ``meta`` keys the loader writes and the preflight reads: where a row came from (file, row, line, the
#: source column of each field) and what the loader already found wrong with it.
SOURCE_KEY = "source"
LOAD_ERRORS_KEY = "load_errors"

# Found by the loader.
BAD_LINE = "bad_line"
MISSING_IMAGE = "missing_image"
NOT_A_FILE = "not_a_file"
CORRUPT_IMAGE = "corrupt_image"
BAD_IMAGE_REF = "bad_image_ref"
PATH_ESCAPES_ROOT = "path_escapes_root"
BAD_TYPE = "bad_type"
# Found by the preflight (and BAD_ANSWER by the loader too, for a NaN).
BAD_IMAGE_SIZE = "bad_image_size"
EMPTY_ANSWER = "empty_answer"
BAD_ANSWER = "bad_answer"
UNKNOWN_ANSWER_TYPE = "unknown_answer_type"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
RESERVED_TOKEN = "reserved_token"
PROMPT_TOO_LONG = "prompt_too_long"
PROCESSOR_ERROR = "processor_error"

#: Every reason a row can be bad for, as written in the report.
REASONS = {
    BAD_LINE: "a line of a JSON file is not a JSON object (truncated, invalid UTF-8, a list or a bare value)",
    MISSING_IMAGE: "an image path does not exist or cannot be read",
    NOT_A_FILE: "an image path is a directory, named pipe, socket or device, not a regular file",
    CORRUPT_IMAGE: "an image does not decode (PIL verify or load failed)",
    BAD_IMAGE_REF: "an image is neither a path, bytes, a {bytes, path} dict nor a PIL image (or has a NUL byte)",
    PATH_ESCAPES_ROOT: "an image path resolves outside the data root (../, absolute path or symlink)",
    BAD_IMAGE_SIZE: "the processor cannot resize the image (e.g. an aspect ratio above its limit)",
    BAD_TYPE: "the prompt is not a string, images is not a list, or the answer is a list or a mapping",
    EMPTY_ANSWER: "the answer is missing (None) or empty after str()",
    BAD_ANSWER: "the answer does not parse for its answer_type as the accuracy reward reads it (or is NaN)",
    UNKNOWN_ANSWER_TYPE: f"answer_type is not one of {ANSWER_TYPES}",
    PLACEHOLDER_MISMATCH: f"the prompt's {IMAGE_PLACEHOLDER} count is neither 0 nor the number of images",
    RESERVED_TOKEN: "the prompt contains a special token of the tokenizer (e.g. <|image_pad|>) as text",
    PROMPT_TOO_LONG: "the predicted prompt length (text + image tokens) exceeds max_prompt_tokens",
    PROCESSOR_ERROR: "the processor raised on the row (exact_lengths mode, where sizes are not checked first)",
}

#: What to do about each reason: the end of the one-line error.
FIXES = {
    BAD_LINE: "repair or delete that line",
    MISSING_IMAGE: "check the path and data.train.data_root",
    NOT_A_FILE: "point the row at an image file",
    CORRUPT_IMAGE: "re-export the image or drop the row",
    BAD_IMAGE_REF: "store a relative path, bytes or a {bytes, path} dict",
    PATH_ESCAPES_ROOT: "move the image under the data root or set data.train.data_root to a common ancestor",
    BAD_IMAGE_SIZE: "crop or pad the image to a sane aspect ratio",
    BAD_TYPE: "store the prompt as text, images as a list and the answer as one string or number",
    EMPTY_ANSWER: "fill in the answer",
    BAD_ANSWER: "fix the answer or the row's answer_type",
    UNKNOWN_ANSWER_TYPE: f"set answer_type to one of {', '.join(ANSWER_TYPES)}",
    PLACEHOLDER_MISMATCH: f"write one {IMAGE_PLACEHOLDER} per image, or none",
    RESERVED_TOKEN: "remove the special token from the prompt text",
    PROMPT_TOO_LONG: "shorten the prompt, shrink the image or raise data.preflight.max_prompt_tokens",
    PROCESSOR_ERROR: "check the image and prompt the processor rejects",
}

#: Reasons that make the whole row unreadable: the preflight checks nothing else on such a row.
ROW_LEVEL = frozenset({BAD_LINE})

assert set(REASONS) == set(FIXES), "every reason needs a fix"

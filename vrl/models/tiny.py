"""Tiny Qwen-style VLMs built in process: no download, a few hundred thousand parameters, CPU friendly.

Three pieces, each shaped like the real thing so that the rest of vrl runs the same code on both:

* ``build_tiny_tokenizer``: a byte-level BPE in the Qwen2 style (same pre-tokenizer regex, same special
  tokens, left padding, the Qwen2-VL instruct chat template) trained in a few milliseconds on a small
  built-in corpus. The vocabulary stays small (~800 entries) on purpose: a *random* policy must be able to
  emit an answer word by chance for the RL learning tests to have any signal.
* ``build_tiny_vlm``: ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` /
  ``Qwen3VLForConditionalGeneration`` from a shrunken config with seeded random weights (text hidden 64,
  2 layers; vision depth 2, width 32: small sizes that build, generate and train in all three families).
* ``build_processor``: the PIL image processor plus the image-only processor from ``vrl.models.processor``
  (the stock ones need torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from vrl.models.processor import QWEN2_VL_CHAT_TEMPLATE, image_only_processor_class

#: Families ``build_tiny_vlm`` knows; also the ``tiny:<family>`` names ``load_vlm`` accepts.
TINY_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

#: The Qwen2 pre-tokenizer split (GPT-4 style, but digits are split one by one). Qwen ships the same regex.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Qwen chat/vision control tokens: special (skipped by ``decode(skip_special_tokens=True)``).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Plain added tokens: atomic, but kept when decoding, because rewards parse them out of responses.
PLAIN_ADDED_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

_WORDS = """
the a an is are it this that there what which how many of in on at to from by with for and or not no yes
all each one two three four five six seven eight nine ten zero number count image picture shape shapes
object colour color size big small large answer question think final option box point left right top
bottom above below upper lower center middle near far next inside outside between behind front same
different more less than red green blue yellow orange purple pink brown black white gray grey cyan
circle square triangle rectangle star ellipse hexagon diamond cross you your helpful assistant user system
word single only format give
"""

#: Capitalised forms a prompt or an answer tends to start with.
_CAPITALISED = "What Which How Is Are The Yes No Answer Options"

_PUNCTUATION = ". , ? ! : ; ' \" ( ) [ ] { } - + * / = < > % # & _ | ~ @ $ ^ `"


def _builtin_corpus() -> list[str]:
    """Lines the tokenizer is trained on: every word with and without a leading space, plus the glue."""
    words = _WORDS.split() + _CAPITALISED.split() + list("ABCDE")
    # " word" (mid-sentence) and "word" (line start): the Qwen2 split makes these two different pre-tokens.
    lines = [" " + " ".join(words), "\n".join(words)]
    lines.append(" ".join(str(i) for i in range(101)))
    lines.append(_PUNCTUATION + " " + _PUNCTUATION.replace(" ", ""))
    # Box answers are written "[x1, y1, x2, y2]"; teach "[", ", " and "]" their usual neighbours.
    lines += [f"[{i}, {i + 7}, {i + 31}, {i + 52}]" for i in range(0, 50, 7)]
    lines += ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "<|im_start|>user\n"]
    lines += ["<|im_start|>assistant\n<think>\n</think>\n<answer>red</answer><|im_end|>\n"]
    lines += ["The answer is (A). Options: (A) yes (B) no. Answer with a single word.\n\n"]
    return lines


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Qwen2's split, then bytes mapped to printable characters (``Ġ`` for a space)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _check_single_token_candidates(pre_tokenizer: pre_tokenizers.PreTokenizer, words: Sequence[str]) -> None:
    """Fail early on words that the Qwen2 split itself cuts in pieces: no BPE merge can join those."""
    for word in words:
        for variant in (word, " " + word):
            pieces = pre_tokenizer.pre_tokenize_str(variant)
            if len(pieces) != 1:
                raise ValueError(
                    f"must_be_single_tokens: {variant!r} is split by the Qwen2 pre-tokenizer into "
                    f"{[p for p, _ in pieces]} (digits are always split one by one, punctuation is cut off "
                    "letters), so it can never be one token; use a letters-only word."
                )


def _train_bpe(corpus: list[str]) -> Tokenizer:
    """Train a Qwen2-style byte-level BPE to completion on ``corpus``.

    Training runs until no pair is left to merge (the vocabulary cap is never reached), so every distinct
    pre-token of the corpus ends up as exactly one token. That is what makes the single-token guarantee
    hold without any added-token tricks, and it keeps training deterministic: with no cap, the result does
    not depend on how ties at the cut-off are broken.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED_TOKENS])
    return tokenizer


def build_tiny_tokenizer(
    extra_texts: Sequence[str] | None = None, must_be_single_tokens: Sequence[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train the tiny Qwen-style tokenizer (deterministic, a few milliseconds).

    Args:
        extra_texts: more training text, e.g. the prompts and answers of a synthetic task, so that its
            words cost one or two tokens instead of a byte each. Every distinct pre-token (roughly: a word
            with its leading space) becomes a token, so the vocabulary grows with the distinct words given.
        must_be_single_tokens: words that must encode to exactly one token both as ``"word"`` and as
            ``" word"``, typically a task's answer words (a random policy then emits them by chance, and
            an answer check never straddles tokens). Must be letters-only words under the Qwen2 split.

    Returns:
        A ``PreTrainedTokenizerFast`` with the Qwen chat special tokens, bos/pad ``<|endoftext|>``, eos
        ``<|im_end|>``, left padding and the Qwen2-VL instruct chat template.

    Raises:
        ValueError: if a ``must_be_single_tokens`` entry can never be one token (see above).
    """
    single = list(dict.fromkeys(must_be_single_tokens or ()))
    _check_single_token_candidates(_pre_tokenizer(), single)
    corpus = _builtin_corpus() + list(extra_texts or ()) + [" " + " ".join(single), "\n".join(single)]
    backend = _train_bpe(corpus)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    for word in single:  # cheap, and turns a silent tokenizer regression into a loud one
        for variant in (word, " " + word):
            if len(tokenizer.encode(variant, add_special_tokens=False)) != 1:
                raise AssertionError(f"BPE training left {variant!r} as several tokens")
    return tokenizer


#: Default sizes of the tiny models; every key can be overridden in ``build_tiny_vlm``.
TINY_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "vision_depth": 2,
    "vision_hidden_size": 32,
    "vision_intermediate_size": 64,
    "vision_num_heads": 2,
    "patch_size": 0,  # 0: the family's own (14, or 16 for Qwen3-VL)
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}

_FAMILY_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width) like Qwen's [16, 24, 24] for 128."""
    half = head_dim // 2
    hw = half * 3 // 8
    return [half - 2 * hw, hw, hw]


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in ids.items()}


def _text_config(family: str, sizes: dict[str, int], tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    head_dim = sizes["hidden_size"] // sizes["num_attention_heads"]
    # mrope_section splits head_dim/2 over (time, height, width) and must sum to it.
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 1e6}
    rope["mrope_section"] = _mrope_section(head_dim)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": sizes["hidden_size"],
        "intermediate_size": sizes["intermediate_size"],
        "num_hidden_layers": sizes["num_hidden_layers"],
        "num_attention_heads": sizes["num_attention_heads"],
        "num_key_value_heads": sizes["num_key_value_heads"],
        "max_position_embeddings": sizes["max_position_embeddings"],
        "rope_parameters": rope,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "qwen3_vl":
        rope["mrope_interleaved"] = True
        text["head_dim"] = head_dim
    else:
        text |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    return text


def _vision_config(family: str, sizes: dict[str, int]) -> dict[str, Any]:
    common = {
        "depth": sizes["vision_depth"],
        "num_heads": sizes["vision_num_heads"],
        "patch_size": sizes["patch_size"] or _FAMILY_PATCH[family],
        "spatial_merge_size": sizes["spatial_merge_size"],
        "temporal_patch_size": sizes["temporal_patch_size"],
    }
    width, text_width = sizes["vision_hidden_size"], sizes["hidden_size"]
    if family == "qwen2_vl":  # hidden_size is the merger's output width here; mlp_ratio sets the MLP
        return common | {
            "embed_dim": width,
            "hidden_size": text_width,
            "mlp_ratio": sizes["vision_intermediate_size"] // width,
        }
    common |= {
        "hidden_size": width,
        "intermediate_size": sizes["vision_intermediate_size"],
        "out_hidden_size": text_width,
    }
    last = sizes["vision_depth"] - 1
    if family == "qwen2_5_vl":  # one window of 112 px = 4x4 merged patches; the last block attends fully
        return common | {"window_size": 112, "fullatt_block_indexes": [last]}
    return common | {"num_position_embeddings": 64, "deepstack_visual_indexes": [last]}


def tiny_config(family: str, tokenizer: PreTrainedTokenizerFast, **size_overrides: int) -> Any:
    """The ``Qwen*VLConfig`` of a tiny model whose token ids and vocabulary come from ``tokenizer``.

    Args:
        family: one of ``TINY_FAMILIES``.
        tokenizer: the tokenizer the model will be used with (usually ``build_tiny_tokenizer()``).
        **size_overrides: keys of ``TINY_SIZES``.

    Raises:
        ValueError: unknown family or size key.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; valid: {', '.join(TINY_FAMILIES)}")
    unknown = sorted(set(size_overrides) - set(TINY_SIZES))
    if unknown:
        raise ValueError(f"unknown tiny size keys {unknown}; valid: {sorted(TINY_SIZES)}")
    sizes = TINY_SIZES | size_overrides
    config_classes = {"qwen2_vl": Qwen2VLConfig, "qwen2_5_vl": Qwen2_5_VLConfig, "qwen3_vl": Qwen3VLConfig}
    # Tied embeddings, as in the small real checkpoints (Qwen2-VL-2B, Qwen2.5-VL-3B): at this size the
    # embedding matrix is most of the model, and tying halves it.
    return config_classes[family](
        text_config=_text_config(family, sizes, tokenizer),
        vision_config=_vision_config(family, sizes),
        tie_word_embeddings=True,
        **_token_ids(tokenizer),
    )


def build_tiny_vlm(
    family: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **size_overrides: int
) -> PreTrainedModel:
    """A randomly initialised tiny Qwen-VL model, bitwise identical for the same seed and sizes.

    The global torch RNG is left untouched (the weights are drawn inside ``fork_rng``), so building a
    model does not shift the random stream of whatever runs next.

    Args:
        family: one of ``TINY_FAMILIES``.
        tokenizer: sets the vocabulary size and the special token ids.
        seed: seeds the weight initialisation.
        **size_overrides: keys of ``TINY_SIZES``, e.g. ``hidden_size=256, num_hidden_layers=4``.

    Returns:
        ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration`` or
        ``Qwen3VLForConditionalGeneration``, in float32 and eval mode, generation ids set.
    """
    from transformers import AutoModelForImageTextToText

    config = tiny_config(family, tokenizer, **size_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_processor(
    family: str,
    tokenizer: PreTrainedTokenizerFast,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> ProcessorMixin:
    """The image-only processor for a tiny model: PIL image backend (no torchvision) plus ``tokenizer``.

    Args:
        family: one of ``TINY_FAMILIES``; sets the patch size (14, or 16 for Qwen3-VL).
        tokenizer: text side, and the source of the chat template.
        min_pixels: images are upscaled to at least this many pixels (default: 4 merged patches).
        max_pixels: and downscaled to at most this many (default: 64 merged patches, 224x224 at patch 14).

    Returns:
        e.g. ``Qwen2_5_VLImageOnlyProcessor``; a 112x112 image becomes 16 ``<|image_pad|>`` tokens.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; valid: {', '.join(TINY_FAMILIES)}")
    patch, merge = _FAMILY_PATCH[family], TINY_SIZES["spatial_merge_size"]
    unit = (patch * merge) ** 2  # pixels per merged patch, i.e. per image token
    half = [0.5, 0.5, 0.5]  # Qwen3-VL normalises to [-1, 1]; the Qwen2 families use the CLIP statistics
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=TINY_SIZES["temporal_patch_size"],
        min_pixels=min_pixels if min_pixels is not None else 4 * unit,
        max_pixels=max_pixels if max_pixels is not None else 64 * unit,
        **({"image_mean": half, "image_std": half} if family == "qwen3_vl" else {}),
    )
    processor_class = image_only_processor_class(family)
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template)

"""A tiny random text model built in process: the offline CPU default behind a model judge (RACRO's reasoner,
PaCo's consistency judge), so those methods run with no download. It judges nothing (its weights are random);
it exercises the whole path: batching, decoding, readouts, registration with the training module.
"""

from __future__ import annotations

from typing import Any

import torch


def tiny_text_model(seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Any:
    """A Qwen2 causal LM over vrl's tiny tokenizer (``vrl.models.tiny.build_tiny_tokenizer``), seeded random
    weights, eval mode. The same seed gives the same weights (a judge rebuilt on resume is the same judge)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vrl.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # the run's random stream is not consumed
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model

"""Tiny random Llama-family models with a real byte-level tokenizer, saved to disk.

Sizes are odd on purpose (intermediate 37) so shape assumptions break, and initializer_range is
large enough that logits are not all alike. Everything is built offline.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

CONFIGS: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}
PAD, BOS, EOS_TEXT, IM_START, IM_END, UNK = "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ids 0..5, then the 256 byte symbols. UNK is never produced (every byte has a token) but must exist:
# transformers 5 loads qwen2 dirs with Qwen2Tokenizer, which otherwise appends <|endoftext|> past the vocab.
SPECIAL_TOKENS = (PAD, BOS, EOS_TEXT, IM_START, IM_END, UNK)
MAX_POSITIONS = 256
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_tokenizer(max_length: int = MAX_POSITIONS) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per UTF-8 byte, no merges): 262 tokens, ChatML template,
    eos = <|im_end|> (ends an assistant turn), pad = <pad>, no special tokens added on encode."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=IM_END, pad_token=PAD, unk_token=UNK,
        model_max_length=max_length)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(arch: str = "llama", *, layers: int = 3, hidden: int = 48, intermediate: int = 37,
                heads: int = 4, kv_heads: int = 2, vocab: int, tie: bool = False,
                max_positions: int = MAX_POSITIONS, bos_id: int, eos_id: int, pad_id: int) -> PretrainedConfig:
    if arch not in CONFIGS:
        raise ValueError(f"arch must be one of {sorted(CONFIGS)}, got {arch!r}")
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})")
    return CONFIGS[arch](
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=max_positions, initializer_range=0.15, tie_word_embeddings=tie,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def make_tiny_model_dir(path: str | Path, *, arch: str = "llama", layers: int = 3, hidden: int = 48,
                        intermediate: int = 37, heads: int = 4, kv_heads: int = 2, vocab: int | None = None,
                        seed: int = 0, dtype: torch.dtype = torch.float32, tie: bool = False,
                        max_positions: int = MAX_POSITIONS) -> Path:
    """Save a random `arch` model (safetensors) plus tokenizer and generation config into `path`.
    `vocab` defaults to the tokenizer's size (262); a larger one leaves unused rows."""
    path = Path(path)
    tokenizer = make_tiny_tokenizer(max_positions)
    vocab = len(tokenizer) if vocab is None else vocab
    if vocab < len(tokenizer):
        raise ValueError(f"vocab must be at least the tokenizer's {len(tokenizer)} tokens, got {vocab}")
    config = tiny_config(arch, layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
                         kv_heads=kv_heads, vocab=vocab, tie=tie, max_positions=max_positions,
                         bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                         pad_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

"""A tiny random-weight Llama and its BPE tokenizer, written as a save_pretrained folder.

recipes/models/tiny-llama/ was made by `python recipes/models/tiny_llama.py recipes/models/tiny-llama`.
Grouped-query attention (2 query heads, 1 KV head) and head_dim 32, the smallest vLLM's CPU
attention takes. Weights are drawn with std 0.2 (transformers' default 0.02 makes a tiny random
decoder repeat one token under greedy decoding); no download, nothing but transformers and tokenizers.
"""

from __future__ import annotations

import sys
from pathlib import Path

TEXT = """mlpack turns a trained model and a recipe into deployable artifacts and proves each one matches the source.
A decoder needs its cache, its weights in four or eight bits, and parity judged token by token.
The server streams text; the client sends text and gets answers, not tensors.
Once upon a time a small model learned to count: one two three four five six seven eight nine ten."""


def make(folder: str | Path, vocab: int = 300, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))

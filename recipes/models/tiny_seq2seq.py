"""Tiny encoder-decoders with random weights, seeded, for recipes/tiny-t5.yaml, tiny-bart.yaml and tiny-whisper.yaml.

The shape is the recipe's generation.config (a transformers config.json, read by transformers here);
the vocabulary is the BPE tokenizer's of recipes/models/tiny-llama. The initializer's std is chosen per
model (T5 0.2, BART 0.1 and Whisper 0.3 with an untied head) so that greedy decoding does not repeat one token: a
generator that repeats proves little.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def build(config: str, seed: int = 0, std: float = 0.2):
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq

    cfg = AutoConfig.from_pretrained(HERE / config)
    torch.manual_seed(seed)
    model = (AutoModelForSpeechSeq2Seq if hasattr(cfg, "num_mel_bins") else AutoModelForSeq2SeqLM).from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model.eval()

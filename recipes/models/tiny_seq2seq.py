"""Tiny encoder-decoders for recipes/tiny-t5.yaml (trained: `train` below), tiny-bart.yaml and tiny-whisper.yaml (random
weights, seeded).

The shape is the recipe's generation.config (a transformers config.json, read by transformers here);
the vocabulary is the BPE tokenizer's of recipes/models/tiny-llama. The initializer's std is chosen per
model (T5 0.2, BART 0.1 and Whisper 0.3 with an untied head) so that greedy decoding does not repeat one token: a
generator that repeats proves little.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def build(config: str, seed: int = 0, std: float = 0.2, trained: bool = False):
    """trained: the weights in the config's folder (model.safetensors, made by `train` below; safetensors only, no pickle)."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq

    if trained:
        return AutoModelForSeq2SeqLM.from_pretrained(HERE / config, use_safetensors=True).eval()
    cfg = AutoConfig.from_pretrained(HERE / config)
    torch.manual_seed(seed)
    model = (AutoModelForSpeechSeq2Seq if hasattr(cfg, "num_mel_bins") else AutoModelForSeq2SeqLM).from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model.eval()


def pairs(info: Path) -> list[tuple[str, str]]:
    """WordNet's (words, gloss) pairs of the ImageNet-1k classes, from timm's tables in `info`."""
    table = lambda name: dict(line.split("\t", 1) for line in (info / name).read_text(encoding="utf-8").splitlines() if "\t" in line)  # noqa: E731
    words, defs = table("imagenet_synset_to_lemma.txt"), table("imagenet_synset_to_definition.txt")
    return [(words[k].strip(), defs[k].strip()) for k in (info / "imagenet_synsets.txt").read_text().split()]


def train(folder: str | Path, info: Path, config: str = "tiny-t5", steps: int = 2500, batch: int = 64, seed: int = 0) -> Path:
    """The tiny T5 trained to write the WordNet gloss of an ImageNet class's words ("golden retriever" -> "an English
    breed having a long silky golden coat"), saved with safetensors into `folder`: weight-only INT4/INT8 are judged on
    weights with structure, whose greedy choices are confident as a trained model's are (a random model's top two
    logits are close at most steps, and any rounding flips them). The tokenizer is tiny-llama's."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, T5ForConditionalGeneration

    tok = Tokenizer.from_file(str(HERE / "tiny-llama" / "tokenizer.json"))
    data = pairs(info)
    src = [tok.encode(w).ids[:16] for w, _ in data]  # as the build encodes a prompt: no EOS
    tgt = [tok.encode(g).ids[:31] + [2] for _, g in data]
    cfg = AutoConfig.from_pretrained(HERE / config)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    pad = lambda rows, value: torch.tensor([r + [value] * (max(map(len, rows)) - len(r)) for r in rows])  # noqa: E731
    model.train()
    for step in range(steps):
        pick = torch.randint(0, len(data), (batch,), generator=gen).tolist()
        x, y = pad([src[i] for i in pick], 0), pad([tgt[i] for i in pick], -100)
        loss = model(input_ids=x, attention_mask=(x != 0).long(), labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"step {step}: loss {float(loss):.3f}", flush=True)
    model.eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


if __name__ == "__main__":
    import sys

    # recipes/models/tiny-t5/model.safetensors: `python recipes/models/tiny_seq2seq.py /tmp/t5 .zoo/site/timm/data/_info`
    # (timm's tables, which `make zoo-deps` installs), then its model.safetensors copied beside tiny-t5/config.json
    print(train(sys.argv[1], Path(sys.argv[2])))

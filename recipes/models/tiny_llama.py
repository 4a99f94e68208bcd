"""A tiny Llama and its BPE tokenizer, written as a save_pretrained folder, trained for a minute on
English text so that quantization is judged on weights with structure (random weights lose far more
to INT4 than trained ones, and say nothing about real models).

recipes/models/tiny-llama/ was made by
`python recipes/models/tiny_llama.py recipes/models/tiny-llama .zoo/site/timm/data/_info/imagenet_synset_to_definition.txt`
(WordNet's glosses of the ImageNet classes, from timm, which `make zoo-deps` installs): the tokenizer and
the model learn from all but the last 200 glosses, which are kept as `sample.txt`, the recipe's text sample
for perplexity. Grouped-query attention (2 query heads, 1 KV head) and head_dim 32, the smallest vLLM's
CPU attention takes. No download, nothing but torch, transformers and tokenizers. Without a corpus it
writes the untrained model (weights drawn with std 0.2: transformers' 0.02 makes a tiny random decoder
repeat one token under greedy decoding).
"""

from __future__ import annotations

import sys
from pathlib import Path

TEXT = """mlpack turns a trained model and a recipe into deployable artifacts and proves each one matches the source.
A decoder needs its cache, its weights in four or eight bits, and parity judged token by token.
The server streams text; the client sends text and gets answers, not tensors.
Once upon a time a small model learned to count: one two three four five six seven eight nine ten."""


HELD_OUT = 200  # glosses kept out of training: the perplexity sample


def _glosses(corpus: Path) -> list[str]:
    return [line.split("\t", 1)[1].strip() for line in corpus.read_text(encoding="utf-8").splitlines() if "\t" in line]


def train(model, tok, texts: list[str], steps: int = 1500, seq: int = 64, batch: int = 32, seed: int = 0) -> float:
    """Next-token training on the texts joined by the end-of-sequence token; the last step's loss."""
    import torch

    ids = []
    for t in texts:
        ids += tok.encode(t).ids + [2]
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in start.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return float(loss)


# The model scripts/bench_generate.py builds and times (`python recipes/models/tiny_llama.py DIR --small`): 8 layers, hidden 512,
# about 30M parameters, random weights (speed does not depend on them).
SMALL = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64}


def make(folder: str | Path, corpus: str | Path | None = None, vocab: int = 300, seed: int = 0, **size) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = _glosses(Path(corpus)) if corpus else []
    training, held_out = texts[:-HELD_OUT], texts[-HELD_OUT:]
    tok.train_from_iterator(training or [TEXT] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
    config = LlamaConfig(
        vocab_size=vocab,
        **(shape | size),
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    if training:
        torch.manual_seed(seed)
        config.initializer_range = 0.02
        model = LlamaForCausalLM(config)
        print(f"trained on {len(training)} glosses: loss {train(model, tok, training, seed=seed):.3f}")
    model.generation_config.pad_token_id = 2
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    if held_out:
        (folder / "sample.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    return folder


if __name__ == "__main__":
    if "--small" in sys.argv:
        print(make(sys.argv[1], vocab=2000, **SMALL))
    else:
        print(make(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama", sys.argv[2] if len(sys.argv) > 2 else None))

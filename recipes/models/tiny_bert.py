"""A small BERT classifier built from a config: no download, random weights."""

import torch


def build(hidden: int = 64, layers: int = 2, heads: int = 2, vocab: int = 1000, labels: int = 4, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=128,
        num_labels=labels,
    )
    # Returns a SequenceClassifierOutput; mlpack flattens it to the recipe's outputs.
    return BertForSequenceClassification(config).eval()

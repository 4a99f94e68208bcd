"""Export-time rewrites (toolchain/torchtools/rewrites.py): the same arithmetic as the layer they
stand in for, only while an export runs, and an export that keeps the dims the layer broke."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from toolchain.torchtools import rewrites  # noqa: E402


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_bag_rewrite_computes_what_the_layer_computes(mode, padding_idx):
    torch.manual_seed(0)
    bag = torch.nn.EmbeddingBag(10, 4, mode=mode, padding_idx=padding_idx)
    ids = torch.randint(0, 10, (5, 4))
    ids[0] = 3  # a bag of padding only, when padding_idx is 3
    weights = torch.rand(5, 4) if mode == "sum" else None
    want = bag(ids, per_sample_weights=weights)
    with rewrites.exporting(bag):
        got = bag(ids, per_sample_weights=weights)
        assert torch.equal(bag(ids.flatten(), torch.tensor([0, 8])), torch.nn.EmbeddingBag.forward(bag, ids.flatten(), torch.tensor([0, 8])))
    torch.testing.assert_close(got, want)
    assert "forward" not in bag.__dict__  # undone


class Bags(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.EmbeddingBag(100, 8, mode="sum")
        self.head = torch.nn.Linear(13, 8)

    def forward(self, dense, ids):
        return torch.stack([self.head(dense), self.table(ids[:, 0])], dim=1)  # a bag per field, as DLRM feeds them


def test_a_2d_embedding_bag_exports_for_a_batch_of_one():
    """F.embedding_bag's own 2-D path leaves export a bag count it cannot prove equal to the
    batch: the program asserts bag != 1 (size-oblivious) and fails at batch 1 or bag 1."""
    from torch.export import Dim

    model = Bags().eval()
    batch = Dim("batch", min=1, max=64)
    shapes = ({0: batch}, {0: batch, 2: Dim("bag", min=1, max=8)})
    args = (torch.rand(16, 13), torch.randint(0, 100, (16, 2, 3)))
    one = (torch.rand(1, 13), torch.randint(0, 100, (1, 2, 1)))

    def export(oblivious):
        with torch.fx.experimental._config.patch(backed_size_oblivious=oblivious):
            return torch.export.export(model, args, dynamic_shapes=shapes, strict=False, prefer_deferred_runtime_asserts_over_guards=True)

    for oblivious in (True, False):  # both strategies mlpack exports with
        with pytest.raises(RuntimeError, match="Runtime assertion failed"):
            export(oblivious).module()(*one)  # the failure the rewrite is for (drop this when torch exports it)
        with rewrites.exporting(model):
            program = export(oblivious)
        torch.testing.assert_close(program.module()(*one), model(*one))
    assert rewrites.found(model) == ["EmbeddingBag as embedding + a reduction over the bag, for 2-D inputs: table"]

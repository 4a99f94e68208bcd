"""PT2E INT8 preparation on graph shapes real models have (the zoo found each)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from toolchain.torchtools.pt2e import quantize, split_reused_modules  # noqa: E402


class Block(torch.nn.Module):
    """torchvision's BasicBlock shape: one ReLU module called twice, a residual add, and a dead branch."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.conv2, self.bn2 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.relu = torch.nn.ReLU()
        self.unused = torch.nn.Linear(4, 4)  # like BERT's pooler when only the hidden states are kept

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        _ = self.unused(x.mean((2, 3)))
        return self.relu(out)


def _program():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 4, 8, 8)
    return model, x, torch.export.export(model, (x,), strict=False)


def test_a_module_called_twice_gets_one_partition_per_call():
    _, _, program = _program()
    assert split_reused_modules(program.module()) == 1  # the ReLU; each conv/bn is called once


def test_quantize_prepares_reused_modules_and_dead_branches():
    model, x, program = _program()
    q = quantize(program, [(torch.randn(2, 4, 8, 8),) for _ in range(4)], dynamic=False, excluded=[])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(x).flatten(), q(x).flatten(), dim=0).item()
    assert cos > 0.99

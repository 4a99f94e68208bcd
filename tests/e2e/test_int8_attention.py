"""INT8 AOTI with attention in BF16 (issue 23, toolchain/torchtools/attention.py): a tiny BERT built by `mlpack build`,
its attention's matmuls in BF16 where this machine has native BF16 (as the manifest says), FP32 elsewhere, and the
package judged by the same parity gate."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.e2e.conftest import mlpack
from toolchain import cpuclass
from toolchain.torchtools import attention, gemm

MODEL = """\
import torch


def build(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return BertModel(config).eval()
"""
RECIPE = """\
name: tiny-bert
source: {framework: pytorch, factory: model.py:build}
inputs:
  - {name: input_ids, dtype: int64, shape: [batch, seq], range: [0, 100]}
  - {name: attention_mask, dtype: int64, shape: [batch, seq], range: [1, 2]}
outputs: [last_hidden_state]
dims:
  batch: {min: 1, opt: 2, max: 4}
  seq: {min: 4, opt: 16, max: 32}
targets:
  - {kind: aoti, name: aoti-int8, precision: int8, fallback: auto}
parity: {samples: 4}
serve: {threads: 3}
"""


@pytest.mark.slow
def test_int8_package_runs_attention_in_bf16_only_where_bf16_is_native(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    proc = mlpack("build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = json.loads(proc.stdout)["targets"][0]
    assert t["status"] == "ok", t.get("reason")
    att = t["aoti"]["attention"]
    if cpuclass.machine_class() in cpuclass.NATIVE_BF16:
        assert att["dtype"] == "bfloat16" and att["rewritten"] == 2, att  # one attention per layer
        assert att["form"] == attention.form_for(cpuclass.machine_class()) and att["kernel"], att
        assert cpuclass.machine_class() in att["why"]
        assert t["export"]["inductor_configs"]["realize_opcount_threshold"] == 4
        assert set(t["cpu"]["fast_on"]) & {"avx512_bf16", "amx_bf16"}, t["cpu"]  # the BF16 it needs to run at its speed
    else:
        assert att["dtype"] == "float32" and att["rewritten"] == 0 and "no native BF16" in att["why"], att
    assert t["parity"]["passed"] and min(o["cosine"] for o in t["parity"]["outputs"].values()) >= 0.99
    # on AMX each GEMM was timed on Inductor's C++ GEMM and oneDNN's (torchtools/gemm.py): all are INT8 either way
    k, tuned = t["aoti"]["kernels"], t["aoti"]["gemm"]
    assert tuned["autotuned"] == (cpuclass.machine_class() in gemm.TEMPLATE_ON), tuned
    # autotuned, each layer's q, k and v are one GEMM (torchtools/concat_linear.py): 4 per layer, not 6
    joined = tuned.get("concatenated", 0)
    assert joined == (2 if tuned["autotuned"] else 0), tuned
    assert k["int8"] + k["int8_template"] == 12 - 2 * joined and (tuned["autotuned"] or k["int8_template"] == 0), k
    if k["int8_template"]:  # AMX tiles in the package's own code: it runs on AMX only, and says so
        assert t["cpu"]["needs"] == "amx", t["cpu"]
        # split for serve.threads, not this machine's CPUs: the template's partition loop in the package says so
        assert tuned["threads"] == 3 and tuned["given"] == "serve.threads" and "split for 3 threads (serve.threads)" in tuned["why"], tuned
        (package,) = (tmp_path / "out").glob("*/aoti-int8/model.pt2")
        with zipfile.ZipFile(package) as z:
            code = "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".kernel.cpp"))
        assert "tid < 3;" in code and "tid < 2;" not in code
        # timed with more threads than that: bench says so before it runs, and the package still answers
        bench = mlpack("bench", str(package.parents[1]), "--threads", "4", "--batch", "1", "--warmup", "0", "--iters", "2", "--seconds", "0.2")
        assert bench.returncode == 0, bench.stderr[-2000:]
        assert "aoti-int8: its GEMMs were compiled split for 3 thread(s) and use no more, here 4 run" in bench.stderr

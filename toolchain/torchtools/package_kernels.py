"""What an AOTInductor package really runs: the extern kernels its generated wrapper calls.

A package compiled without effective freezing still runs, and still passes parity, but an
"INT8" package then dequantizes its weights on every call and multiplies in FP32 (BERT-base:
1.04x eager instead of the integer kernels' speed-up). Reading the wrapper source the
package ships (`*.wrapper.cpp`) tells which GEMM/conv kernels were lowered, without running
anything, so the manifest records it and the build warns when an INT8 package has none.
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

_CALL = re.compile(r"\baoti_torch_cpu_(\w+?)\(|\b(cpp_fused_\w+?)_\d+\(")
# Inductor's own C++ GEMM (max-autotune's template: micro-kernels, AMX tiles where the machine has them), by the
# operand types of its definition in the package's kernel source: u8 x s8 is an INT8 GEMM
_TEMPLATE = re.compile(r"void\s+(cpp_\w+?)\((const (uint8_t|float|at::BFloat16|at::Half)\* X, const (int8_t|float|at::BFloat16|at::Half)\* W)")
CLASSES = (
    # oneDNN INT8 kernels the PT2E q/dq patterns lower to (onednn.qlinear_pointwise, qconv_pointwise)
    ("int8", re.compile(r"q(linear|conv)")),
    # oneDNN/MKL float kernels on prepacked (frozen) weights
    ("onednn_float", re.compile(r"mkldnn|mkl_linear|_linear_pointwise|_convolution_pointwise|_convolution_transpose_pointwise")),
    # ATen GEMM/conv on plain weights: what runs without freezing
    ("aten_float", re.compile(r"^(addmm|mm|bmm|baddbmm|convolution|_convolution)(_out)?$")),
)


@dataclass(frozen=True)
class Kernels:
    """GEMM/conv call sites by class (the manifest's aoti.kernels)."""

    int8: int
    onednn_float: int
    aten_float: int
    weight_dequant_per_call: int
    int8_template: int = 0  # Inductor's C++ GEMM template (gemm: auto), in place of a oneDNN qlinear
    float_template: int = 0

    @property
    def float(self) -> int:
        return self.onednn_float + self.aten_float + self.float_template

    @property
    def integer(self) -> int:
        """INT8 GEMMs, whichever kernel computes them."""
        return self.int8 + self.int8_template

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(path: Path) -> Kernels | None:
    """Call sites of GEMM/conv extern kernels by class, and how many of Inductor's fused kernels
    dequantize weights on every call (`weight_dequant_per_call`); None when the package ships
    no wrapper source."""
    try:
        with zipfile.ZipFile(path) as z:
            source = "".join(z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith(".wrapper.cpp"))
            kernels = "".join(z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith(".kernel.cpp"))
    except (OSError, zipfile.BadZipFile):
        return None
    if not source:
        return None
    calls: Counter = Counter()
    fused = set()
    for extern, kernel in _CALL.findall(source):
        if kernel:  # Inductor's own kernels: named at their definition and at each call, so count names
            fused.add(kernel)
            continue
        for label, pattern in CLASSES:
            if pattern.search(extern):
                calls[label] += 1
                break
    dequant = sum("dequantize_per_channel" in k for k in fused)
    templates = {name: x == "uint8_t" for name, _, x, _ in _TEMPLATE.findall(kernels + source)}
    sites = Counter(templates[name] for name in re.findall(r"\b(cpp_\w+?)\((?!const )", source) if name in templates)  # not the declaration
    return Kernels(*(calls.get(label, 0) for label, _ in CLASSES), weight_dequant_per_call=dequant, int8_template=sites[True], float_template=sites[False])

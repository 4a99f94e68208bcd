"""INT8 AOTI GEMMs autotuned on AMX (toolchain/torchtools/gemm.py): where it is on, and how the package's kernels are
counted when Inductor's own C++ GEMM replaces oneDNN's qlinear (package_kernels.py)."""

from __future__ import annotations

import os
import zipfile

import pytest

from toolchain import cpuclass
from toolchain.recipe import load_recipe
from toolchain.torchtools import gemm, package_kernels


def _recipe(tmp_path, cpus: list[str], target: str = "{kind: aoti, precision: int8}", threads: str = ""):
    (tmp_path / "m.py").write_text("def build():\n    import torch\n    return torch.nn.Linear(4, 4)\n")
    (tmp_path / "recipe.yaml").write_text(
        "name: r\nsource: {framework: pytorch, factory: m.py:build}\ninputs: [{name: x, dtype: float32, shape: [1, 4]}]\n"
        f"targets: [{target}]\nserve: {{cpus: {cpus}{threads}}}\n"
    )
    return load_recipe(tmp_path / "recipe.yaml")


@pytest.mark.parametrize(
    "machine, cpus, option, on, said",
    [
        ("amx", [], "auto", True, "AMX"),
        ("amx", ["amx"], "auto", True, "AMX"),
        ("amx", ["avx512_vnni", "amx"], "auto", False, "serve.cpus has avx512_vnni"),
        ("avx512_bf16", [], "auto", False, "has no AMX"),
        ("amx", [], "aten", False, "gemm: aten"),
    ],
)
def test_autotuned_only_on_amx_for_a_fleet_of_amx(tmp_path, monkeypatch, machine, cpus, option, on, said):
    monkeypatch.setattr(cpuclass, "machine_class", lambda: machine)
    configs, why, split = gemm.configs_for(_recipe(tmp_path, cpus), option, "int8")
    assert bool(configs) == on and said in why
    assert configs == (gemm.CONFIGS | gemm.split_threads(None)[1] if on else {}) and (split is not None) == on


def test_gemms_are_split_for_the_serving_threads(tmp_path, monkeypatch):
    """The template's GEMMs use no more threads than they were split for: serve.threads decides it, else the build's
    intra-op threads; where the split is not the machine's CPU count, dynamic threads keep a call from always starting
    that many OpenMP threads; one thread is serial code."""
    import torch

    monkeypatch.setattr(cpuclass, "machine_class", lambda: "amx")
    configs, why, split = gemm.configs_for(_recipe(tmp_path, [], threads=", threads: 16"), "auto", "int8")
    assert split == {"threads": 16, "given": "serve.threads"} and "split for 16 threads (serve.threads)" in why
    assert (configs["cpp.threads"], configs["cpp.dynamic_threads"]) == (16, True)
    configs, why, split = gemm.configs_for(_recipe(tmp_path, []), "auto", "int8")
    threads = torch.get_num_threads()
    assert split == {"threads": threads, "given": "build"} and f"split for {threads} threads (the build's threads" in why
    monkeypatch.setattr(os, "cpu_count", lambda: threads)
    assert gemm.split_threads(None) == (threads, {} if threads > 1 else {"cpp.threads": 1})  # Inductor's default
    assert gemm.split_threads(threads + 1) == (threads + 1, {"cpp.threads": threads + 1, "cpp.dynamic_threads": True})
    assert gemm.split_threads(1) == (1, {"cpp.threads": 1})  # no dynamic threads (7% slower at one thread)
    monkeypatch.setattr(os, "cpu_count", lambda: threads * 2)  # SMT: torch's threads are the cores
    assert gemm.split_threads(None) == (threads, {"cpp.threads": threads, "cpp.dynamic_threads": True} if threads > 1 else {"cpp.threads": 1})


def test_the_split_is_in_the_cache_key_of_autotuned_packages_only(tmp_path, monkeypatch):
    """serve.threads (or, unset, what decides torch's thread count) keys an autotuned package, and nothing else."""
    from toolchain import cache

    monkeypatch.setattr(cpuclass, "machine_class", lambda: "amx")
    targets = "{kind: aoti, precision: int8}, {kind: aoti, name: fp, precision: fp32}, {kind: onnx}"
    plain, sixteen = _recipe(tmp_path, [], targets), _recipe(tmp_path, [], targets, threads=", threads: 16")
    keys = [[cache.target_key(r, t, "src") for t in r.targets] for r in (plain, sixteen)]
    assert keys[0][0] != keys[1][0] and keys[0][1:] == keys[1][1:]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch's default count changes: so does the unset split
    assert cache.target_key(plain, plain.targets[0], "src") != keys[0][0]
    assert cache.target_key(sixteen, sixteen.targets[0], "src") == keys[1][0]
    monkeypatch.setattr(cpuclass, "machine_class", lambda: "avx512_bf16")  # not autotuned here: threads decide nothing
    assert cache.target_key(plain, plain.targets[0], "src") == cache.target_key(sixteen, sixteen.targets[0], "src")


def _targets():
    from toolchain.records import Status, TargetResult

    split = {"aoti": {"precision": "int8", "gemm": {"autotuned": True, "why": "AMX", "threads": 2, "given": "build"}}}
    given = {"aoti": {"precision": "bf16", "gemm": {"autotuned": True, "why": "AMX", "threads": 2, "given": "serve.threads"}}}
    return [
        TargetResult("aoti-int8", "aoti", Status.OK, extra=split),
        TargetResult("aoti-bf16", "aoti", Status.OK, extra=given),
        TargetResult("aoti", "aoti", Status.OK, extra={"aoti": {"precision": "fp32"}}),
        TargetResult("onnx", "onnx", Status.OK),
        TargetResult("plugin", "not-installed-here", Status.OK),
        TargetResult("failed", "aoti", Status.FAILED, extra=split),
    ]


def test_a_run_with_more_threads_than_the_split_is_warned():
    import torch

    from toolchain.hostwarn import thread_warnings

    rows = thread_warnings(_targets(), None, 8)
    assert [r.split(":")[0] for r in rows] == ["aoti-int8", "aoti-bf16"]
    assert rows[0].startswith("aoti-int8: its GEMMs were compiled split for 2 thread(s)") and "serve.threads: 8" in rows[0]
    assert thread_warnings(_targets(), None, 2) == [] and thread_warnings(_targets(), ["aoti"], 8) == []
    # a server gives serve.threads to the instances its configs were written for: only the build's split is warned
    assert [r.split(":")[0] for r in thread_warnings(_targets(), None, 8, serving=True)] == ["aoti-int8"]
    # no count given: torch's default, what bench and a server run
    assert bool(thread_warnings(_targets(), None, None)) == (torch.get_num_threads() > 2)


def test_gemm_option_is_for_int8_and_bf16_cpu_packages(tmp_path):
    assert _recipe(tmp_path, [], "{kind: aoti, precision: bf16, gemm: aten}").targets[0].gemm == "aten"
    for target in ("{kind: aoti, precision: fp32, gemm: aten}", "{kind: aoti, precision: fp16, device: cuda, gemm: aten}"):
        with pytest.raises(Exception, match="gemm: aten applies to CPU packages of precision int8 or bf16 only"):
            _recipe(tmp_path, [], target)


def test_bf16_is_compiled_for_the_lowest_bf16_class(tmp_path, monkeypatch):
    """A BF16 package is offered only where BF16 is native: an avx2 host in the fleet does not stop its templates,
    an avx512_bf16 one does (its code is compiled for it, without tiles)."""
    monkeypatch.setattr(cpuclass, "machine_class", lambda: "amx")
    assert gemm.configs_for(_recipe(tmp_path, ["avx2", "amx"], "{kind: aoti, precision: bf16}"), "auto", "bf16")[0]
    assert gemm.configs_for(_recipe(tmp_path, ["avx2", "amx"]), "auto", "int8")[0] == {}
    configs, why, _ = gemm.configs_for(_recipe(tmp_path, ["avx512_bf16", "amx"], "{kind: aoti, precision: bf16}"), "auto", "bf16")
    assert configs == {} and "serve.cpus has avx512_bf16" in why


WRAPPER = """
extern "C" void cpp_fused_add_quantize_per_tensor_6(const uint8_t* X, const int8_t* W, const float* inp, float* Y);
extern "C" void cpp_fused_gemm_1(const float* X, const float* W, float* Y);
    AOTI_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu__qlinear_pointwise_tensor(buf7, x_scale, &buf8_handle));
    cpp_fused_add_quantize_per_tensor_6((const uint8_t*)(buf32.data_ptr()), (const int8_t*)(w.data_ptr()));
    cpp_fused_add_quantize_per_tensor_6((const uint8_t*)(buf62.data_ptr()), (const int8_t*)(w2.data_ptr()));
    cpp_fused_gemm_1((const float*)(buf1.data_ptr()), (const float*)(w3.data_ptr()));
    cpp_fused_layer_norm_7((float*)(buf1.data_ptr()));
"""
KERNELS = """
extern "C"
void cpp_fused_add_quantize_per_tensor_6(const uint8_t* X, const int8_t* W, const float* inp, float* Y)
extern "C"
void cpp_fused_gemm_1(const float* X, const float* W, float* Y)
extern "C"  void  cpp_fused_layer_norm_7(float* in_out_ptr0)
"""


def test_template_gemms_are_counted_by_their_operand_types_at_each_call(tmp_path):
    path = tmp_path / "model.pt2"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data/aotinductor/model/a.wrapper.cpp", WRAPPER)
        z.writestr("m/data/aotinductor/model/b.kernel.cpp", KERNELS)
    k = package_kernels.summarize(path)
    assert (k.int8, k.int8_template, k.float_template, k.integer, k.float) == (1, 2, 1, 3, 1)


def test_a_template_that_fails_to_compile_costs_only_the_autotuning(monkeypatch, tmp_path, capsys):
    """No model here makes Inductor's C++ GEMM fail to compile (a failing candidate is dropped by the autotuner itself),
    so `compile_package` is replaced by a double that fails whenever the autotuning configs are passed: the package is
    then compiled with oneDNN alone, and the manifest's why says so."""
    from types import SimpleNamespace

    from toolchain.records.steps import Attempt
    from toolchain.torchtools import aoti_precision
    from toolchain.torchtools.aoti_compile import CompileFailed

    calls = []

    def compile_double(source, device, dest, module=None, configs=None, precision=None):
        calls.append(dict(configs))
        if configs.get("max_autotune"):
            raise CompileFailed([Attempt("strict", "compile", "C++ compile error: expected initializer before '*' token")], None)
        return "program", "record"

    monkeypatch.setattr(aoti_precision, "compile_package", compile_double)
    spec = SimpleNamespace(device="cpu", precision="bf16")
    tuned = gemm.CONFIGS | {"cpp.threads": 4, "cpp.dynamic_threads": True}
    program, record, kept, why = aoti_precision._compile_tuned(None, spec, tmp_path / "m.pt2", None, {"freezing": True}, tuned, "AMX")
    assert (program, record, kept) == ("program", "record", {}) and calls == [{"freezing": True} | tuned, {"freezing": True}]
    assert why.startswith("Inductor's C++ GEMM did not compile (C++ compile error: expected initializer before '*' token)") and why.endswith(
        "oneDNN's kernels alone"
    )
    assert "bf16: Inductor's C++ GEMM did not compile" in capsys.readouterr().out
    calls.clear()  # without autotuning, a failure is the build's own: raised, not retried
    monkeypatch.setattr(aoti_precision, "compile_package", lambda *a, **k: (_ for _ in ()).throw(CompileFailed([Attempt("strict", "compile", "x")], None)))
    with pytest.raises(CompileFailed):
        aoti_precision._compile_tuned(None, spec, tmp_path / "m.pt2", None, {"freezing": True}, {}, "gemm: aten")

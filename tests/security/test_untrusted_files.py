"""Files a recipe points at may come from someone else: loading them must not run their code."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from toolchain.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickled, it creates the folder `marker`: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _tiny_program(path: Path):
    import torch

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    torch.export.save(torch.export.export(M().eval(), (torch.randn(2, 4),)), str(path))


def _poison(src: Path, dst: Path, member_suffix: str, payload: bytes) -> None:
    """Copy the .pt2 archive, replacing one member's bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        names = [i.filename for i in zin.infolist()]
        assert any(n.endswith(member_suffix) for n in names), names
        for info in zin.infolist():
            data = payload if info.filename.endswith(member_suffix) else zin.read(info.filename)
            zout.writestr(info, data)


def _torch_pickle(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    _tiny_program(path)
    return path


def test_a_clean_exported_program_loads(clean_pt2):
    import torch

    from toolchain.torchtools.safe_load import load_exported

    ep = load_exported(clean_pt2)
    assert ep.module()(torch.ones(2, 4)).shape == (2, 3)


def test_a_pickle_payload_in_the_sample_inputs_is_refused_and_never_runs(clean_pt2, tmp_path):
    from toolchain.torchtools.safe_load import load_exported

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    _poison(clean_pt2, evil, "sample_inputs/model.pt", _torch_pickle((_Payload(str(marker)), {})))
    with pytest.raises(UsageError) as e:
        load_exported(evil)
    assert not marker.exists()
    assert "loading it would run code from the file" in str(e.value) and "source.allow_pickle: true" in e.value.hint
    # The opt-in really unpickles: the same file then runs its payload (so the refusal above is what stopped it).
    load_exported(evil, allow_pickle=True)
    assert marker.is_dir()


@pytest.mark.parametrize("kind", ["tensor_", "opaque_obj_"])
def test_a_pickled_constant_is_refused(clean_pt2, tmp_path, kind):
    """Constants marked use_pickle go through torch.load(weights_only=False); opaque objects through pickle.loads."""
    import pickle

    from toolchain.torchtools.safe_load import load_exported

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(clean_pt2) as z:
        root = z.namelist()[0].split("/", 1)[0]
    payload = _torch_pickle(_Payload(str(marker))) if kind == "tensor_" else pickle.dumps(_Payload(str(marker)))
    config = {"config": {"evil": {"path_name": f"{kind}0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
    step = tmp_path / "step.pt2"
    _poison(clean_pt2, step, "constants/model_constants_config.json", json.dumps(config).encode())
    with zipfile.ZipFile(step, "a") as z:
        z.writestr(f"{root}/data/constants/{kind}0", payload)
    shutil.move(step, evil)
    with pytest.raises(UsageError) as e:
        load_exported(evil)
    assert not marker.exists(), "code from the file ran"
    assert "loading it would run code from the file" in str(e.value)
    with contextlib.suppress(Exception):  # whether torch can use what the payload returned or not, it ran:
        load_exported(evil, allow_pickle=True)
    assert marker.is_dir()


def test_the_build_refuses_a_hostile_pt2_with_exit_2(clean_pt2, tmp_path):
    marker = tmp_path / "pwned"
    _poison(clean_pt2, tmp_path / "model.pt2", "sample_inputs/model.pt", _torch_pickle((_Payload(str(marker)), {})))
    (tmp_path / "recipe.yaml").write_text(
        "name: hostile\nsource: {framework: pytorch, exported: model.pt2}\n"
        "inputs: [{name: x, dtype: float32, shape: [2, 4]}]\noutputs: [y]\ntargets: [{kind: onnx}]\n"
    )
    proc = subprocess.run([sys.executable, "-m", "toolchain", "build", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()
    assert "model.pt2" in proc.stderr and "source.allow_pickle" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "hostile").exists()


def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    from toolchain.feeds import load_feeds

    marker = tmp_path / "pwned"
    np.savez(tmp_path / "evil.npz", **{"0/x": np.array([_Payload(str(marker))], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        load_feeds(tmp_path / "evil.npz")
    assert not marker.exists()


def test_keras_files_load_in_safe_mode():
    """A .keras file with a Lambda layer holds marshalled Python bytecode: safe_mode refuses it."""
    text = (ROOT / "toolchain" / "sources" / "tensorflow.py").read_text()
    assert "safe_mode=True" in text

"""A servable copy of a build's Triton repository for a server lacking native backends.

Each model whose native backend is missing keeps its config (name, inputs,
outputs, dims, dtypes, batching, version policy, instances) with only the
backend switched to Python and the generated model.py beside the artifact, so
Triton still parses and enforces the config. Artifacts are symlinked, not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolchain import kinds
from toolchain.records import Manifest, ServedModel
from toolchain.serving import protos
from toolchain.serving.triton import render_model_py


@dataclass
class Served:
    """How one model is put in front of the server."""

    name: str
    native_backend: str  # what its config asks for
    backend: str  # what serves it: the native name, or "python (stands in for <native>)"
    skip_reason: str | None = None


def parse_config(config_text: str):
    """A config.pbtxt as Triton's ModelConfig proto."""
    return protos.parse(config_text, protos.model_config())


def native_backend(config_text: str) -> str:
    """The backend directory Triton loads for a config: its backend, else its platform's (from the kinds)."""
    cfg = parse_config(config_text)
    if cfg.backend:
        return cfg.backend
    by_platform = {k.triton.platform: k.triton.backend for k in kinds.kinds().values() if k.triton and k.triton.platform}
    return by_platform.get(cfg.platform, cfg.platform or "?")


def standin_config(config_text: str) -> str:
    """The same config served by the Python backend: only platform/backend change."""
    cfg = parse_config(config_text)
    cfg.ClearField("platform")
    cfg.backend = "python"
    return protos.to_text(cfg, [f"# mlpack serve-check: Python backend standing in for {native_backend(config_text)}"])


def prepare(models: list[ServedModel], root: Path, out: Path, available: set[str], manifest: Manifest) -> list[Served]:
    """Fill repository `out` with the build's Triton models (the manifest's serving.models); one Served per model."""
    served = []
    for m in models:
        src = root / m.path
        text = (src / "config.pbtxt").read_text()
        nb = native_backend(text)
        dst = out / m.name
        if nb in available or nb == "ensemble":  # an ensemble is Triton's own scheduling, no backend
            dst.symlink_to(src.resolve(), target_is_directory=True)
            served.append(Served(m.name, nb, nb))
            continue
        target = manifest.target(m.target)
        kind = kinds.kinds().get(target.kind)
        if kind is None or kind.triton is None or kind.triton.python_backend is None:
            served.append(Served(m.name, nb, "-", f"backend '{nb}' is not in this server and mlpack has no Python stand-in for {target.kind} artifacts"))
            continue
        dst.mkdir()
        (dst / "config.pbtxt").write_text(standin_config(text))
        for vdir in sorted(p for p in src.iterdir() if p.is_dir()):
            (dst / vdir.name).mkdir()
            for f in vdir.iterdir():
                (dst / vdir.name / f.name).symlink_to(f.resolve())
            (dst / vdir.name / "model.py").write_text(render_model_py(kind.name, target.device))
        served.append(Served(m.name, nb, f"python (stands in for {nb})"))
    return served

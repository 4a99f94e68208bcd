"""A servable copy of a build's Triton repository for a server lacking native backends.

Each model whose native backend is missing keeps its config (name, inputs,
outputs, dims, dtypes, batching, version policy, instances) with only the
backend switched to Python and the generated model.py beside the artifact, so
Triton still parses and enforces the config. Artifacts are symlinked, not copied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolchain.serving.server import PLATFORM_BACKEND
from toolchain.serving.triton import ARTIFACT_FILE, render_model_py


@dataclass
class Served:
    """How one model is put in front of the server."""

    name: str
    native_backend: str  # what its config asks for
    backend: str  # what serves it: the native name, or "python (stands in for <native>)"
    skip_reason: str | None = None


def native_backend(config_text: str) -> str:
    cfg = parse_config(config_text)
    return cfg.backend or PLATFORM_BACKEND.get(cfg.platform, cfg.platform or "?")


def parse_config(config_text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config_text, model_config_pb2.ModelConfig())


def standin_config(config_text: str) -> str:
    """The same config served by the Python backend: only platform/backend change."""
    from google.protobuf import text_format

    cfg = parse_config(config_text)
    cfg.ClearField("platform")
    cfg.backend = "python"
    return f"# mlpack serve-check: Python backend standing in for {native_backend(config_text)}\n" + text_format.MessageToString(cfg)


def prepare(models: list[dict], root: Path, out: Path, available: set[str], kinds: dict[str, str], devices: dict[str, str]) -> list[Served]:
    """Fill repository `out` with the build's Triton models; one Served per model.

    models: the manifest's serving.models entries; kinds/devices: by target name.
    """
    served = []
    for m in models:
        src = root / m["path"]
        text = (src / "config.pbtxt").read_text()
        nb = native_backend(text)
        dst = out / m["name"]
        if nb in available:
            dst.symlink_to(src.resolve(), target_is_directory=True)
            served.append(Served(m["name"], nb, nb))
            continue
        kind = kinds.get(m["target"])
        if kind not in ARTIFACT_FILE:
            served.append(Served(m["name"], nb, "-", f"backend '{nb}' is not in this server and mlpack has no Python stand-in for {kind} artifacts"))
            continue
        dst.mkdir()
        (dst / "config.pbtxt").write_text(standin_config(text))
        for vdir in sorted(p for p in src.iterdir() if p.is_dir()):
            (dst / vdir.name).mkdir()
            for f in vdir.iterdir():
                (dst / vdir.name / f.name).symlink_to(f.resolve())
            (dst / vdir.name / "model.py").write_text(render_model_py(kind, devices.get(m["target"], "cpu")))
        served.append(Served(m["name"], nb, f"python (stands in for {nb})"))
    return served

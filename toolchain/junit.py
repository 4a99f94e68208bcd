"""JUnit XML for CI systems: one test case per target, parity figures in the message."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from toolchain.records import Manifest, Stage, Status, TargetResult


def _parity_failure(t: TargetResult) -> bool:
    """A parity failure is a JUnit failure; every other failed stage is an error."""
    return t.status is Status.FAILED and t.stage is Stage.PARITY


def _figures(t: TargetResult) -> str:
    if t.parity is None:
        return ""
    parts = []
    for name, o in t.parity.outputs.items():
        top1 = f", top1 {o.top1:.4f}" if o.top1 is not None else ""
        parts.append(f"{name}: max_abs_err {o.max_abs_err:.3e}, max_rel_err {o.max_rel_err:.3e}, cosine {o.cosine:.6f}{top1}")
    tol = ", ".join(f"{k}={v:g}" for k, v in t.parity.tolerance.items())
    return "; ".join(parts) + (f" (tolerance {tol})" if tol else "")


def write_junit(path: Path, manifest: Manifest, build_dir: Path) -> None:
    targets = manifest.targets
    suite = ET.Element(
        "testsuite",
        name=f"mlpack.{manifest.name}",
        tests=str(len(targets)),
        failures=str(sum(_parity_failure(t) for t in targets)),
        errors=str(sum(t.status is Status.FAILED and not _parity_failure(t) for t in targets)),
        skipped=str(sum(t.status is Status.SKIPPED for t in targets)),
        time=f"{manifest.build_seconds:.3f}",
    )
    for t in targets:
        case = ET.SubElement(suite, "testcase", classname=f"mlpack.{manifest.name}", name=t.name, time=f"{t.build_seconds:.3f}")
        figures = _figures(t)
        if t.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=t.reason or "")
        elif _parity_failure(t):
            el = ET.SubElement(case, "failure", message=f"parity failed: {figures}", type="parity")
            el.text = "\n".join(f for o in t.parity.outputs.values() for f in o.failures)
        elif t.status is Status.FAILED:
            el = ET.SubElement(case, "error", message=(t.reason or "failed").splitlines()[0], type=t.stage.value if t.stage else "convert")
            el.text = (t.reason or "") + (f"\nlog: {build_dir / t.log}" if t.log else "")
        else:
            ET.SubElement(case, "system-out").text = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)

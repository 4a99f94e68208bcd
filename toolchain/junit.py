"""JUnit XML for CI systems: one test case per target, parity figures in the message."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from toolchain.results import Stage


def _parity_failure(t: dict) -> bool:
    """A parity failure is a JUnit failure; every other failed stage is an error."""
    return t["status"] == "failed" and t.get("stage") == Stage.PARITY.value


def _figures(t: dict) -> str:
    par = t.get("parity") or {}
    parts = []
    for name, o in (par.get("outputs") or {}).items():
        top1 = f", top1 {o['top1']:.4f}" if o.get("top1") is not None else ""
        parts.append(f"{name}: max_abs_err {o['max_abs_err']:.3e}, max_rel_err {o['max_rel_err']:.3e}, cosine {o['cosine']:.6f}{top1}")
    tol = ", ".join(f"{k}={v:g}" for k, v in (par.get("tolerance") or {}).items())
    return "; ".join(parts) + (f" (tolerance {tol})" if tol else "")


def write_junit(path: Path, manifest: dict, build_dir: Path) -> None:
    targets = manifest["targets"]
    suite = ET.Element(
        "testsuite",
        name=f"mlpack.{manifest['name']}",
        tests=str(len(targets)),
        failures=str(sum(_parity_failure(t) for t in targets)),
        errors=str(sum(t["status"] == "failed" and not _parity_failure(t) for t in targets)),
        skipped=str(sum(t["status"] == "skipped" for t in targets)),
        time=f"{manifest.get('build_seconds', 0):.3f}",
    )
    for t in targets:
        case = ET.SubElement(suite, "testcase", classname=f"mlpack.{manifest['name']}", name=t["name"], time=f"{t['build_seconds']:.3f}")
        figures = _figures(t)
        if t["status"] == "skipped":
            ET.SubElement(case, "skipped", message=t["reason"] or "")
        elif _parity_failure(t):
            el = ET.SubElement(case, "failure", message=f"parity failed: {figures}", type="parity")
            el.text = "\n".join(f for o in t["parity"]["outputs"].values() for f in o.get("failures", []))
        elif t["status"] == "failed":
            el = ET.SubElement(case, "error", message=(t["reason"] or "failed").splitlines()[0], type=t.get("stage") or "convert")
            el.text = (t["reason"] or "") + (f"\nlog: {build_dir / t['log']}" if t.get("log") else "")
        else:
            ET.SubElement(case, "system-out").text = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)

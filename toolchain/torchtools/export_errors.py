"""What torch.export's (and the exporters built on it) failures say about the recipe's dims,
read from their text: the AOTI and ONNX kinds both turn these into a hint that names the fix."""

from __future__ import annotations

import re

# torch.export fixed a dim the recipe declares dynamic to the example's size.
_SPECIALIZED = ("Constraints violated", "specialized value", "Specializations unexpectedly required")


def specialized(text: str) -> bool:
    """Whether export failed because it fixed a dynamic dim to the example's size."""
    return any(m in text for m in _SPECIALIZED)


def specialized_dims(text: str) -> list[str]:
    """The dims a "Constraints violated (a, b)" failure names."""
    m = re.search(r"Constraints violated \(([^)]*)\)", text)
    return [d.strip() for d in m.group(1).split(",")] if m else []


def data_dependent_site(text: str) -> str | None:
    """Where the model computes a shape from a value export cannot keep symbolic
    (GuardOnDataDependentSymNode: Longformer chunking its sequence by its attention window),
    as "file.py:line in function", or None when the failure is another."""
    if "GuardOnDataDependentSymNode" not in text and "data-dependent expression" not in text:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text.split("The following call raised this error:", 1)[-1])
    if not frames:
        return "the model"
    path, line, func = frames[0]
    return f"{path.rsplit('/', 1)[-1]}:{line} in {func}"


def data_dependent_hint(site: str, dynamic: list[str]) -> str:
    """The fix for a shape computed from data (`site`), naming the recipe's dynamic dims."""
    dims = ", ".join(f"dims.{d}" for d in dynamic) or "the dynamic dims"
    return (f"the model computes a shape from a value torch.export treats as data ({site}): either a dynamic size reached "
            f"through arithmetic export cannot follow (a padding to a multiple of a window), which exports once the dims it "
            f"depends on are static for this target (of {dims}; min == max, at a size the model does not pad), or the inputs' "
            f"values themselves (how many tokens are marked), which an exported graph cannot express: then no export "
            f"target takes the model as written")  # fmt: skip

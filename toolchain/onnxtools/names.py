"""Give a graph's inputs and outputs the recipe's names without clashing with its own.

An exporter names internal values after the modules that produce them (BERT's
`embeddings`, a pooler's `embedding`). Renaming a graph output to the recipe's
`embedding` then defines that name twice, and ONNX Runtime refuses the file
("Duplicate definition of name"). Here the internal value that holds a wanted
name is renamed first; values are objects in onnx_ir, so every use follows.
"""

from __future__ import annotations

from collections.abc import Iterator


def _values(graph) -> Iterator:
    import onnx_ir as ir

    yield from graph.inputs
    yield from graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs
        for attr in node.attributes.values():  # subgraph inputs (If, Loop, Scan bodies)
            for sub in attr.value if isinstance(attr.value, list) else [attr.value]:
                if isinstance(sub, ir.Graph):
                    yield from sub.inputs


def assign_io_names(model, inputs: list[str], outputs: list[str]) -> list[tuple[str, str]]:
    """Name the graph's inputs and outputs in order; returns the (old, new) renames of clashing internal values."""
    graph = model.graph
    wanted = list(zip(graph.inputs, inputs)) + list(zip(graph.outputs, outputs))
    io = {id(v) for v, _ in wanted}
    taken = {v.name for v in _values(graph)} | set(inputs) | set(outputs)
    moved = []
    for value in list(_values(graph)):
        if id(value) not in io and value.name in set(inputs) | set(outputs):
            n = 1
            while f"{value.name}_{n}" in taken:
                n += 1
            moved.append((value.name, f"{value.name}_{n}"))
            value.name = f"{value.name}_{n}"
            taken.add(value.name)
    for value, name in wanted:
        value.name = name
    return moved

"""TF Serving's sizes (issue 26): a SavedModel's signature takes any size along a dynamic dim, so a served target whose
artifact runs only at some (a multiple, or `dims.<name>.pad`) is written as a SavedModel that wraps it with
serving/padding.py's rules in TF ops: a request of another size is refused with the same message Triton's model.py
gives, or zero-padded up to an accepted size and its outputs cut back. The wrapped artifact is called as it is (an XLA
artifact keeps its jit_compile function), and the serve-check replays the pad samples through it.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolchain.serving.padding import accepted_text

SIZES = Path("assets.extra") / "mlpack_sizes.json"  # the tables, for serve-check (TF Serving ignores the file)


def served_table(version_dir: Path) -> dict[str, list[list]]:
    """ACCEPTS of a TF Serving model version ({} when it takes any size)."""
    path = version_dir / SIZES
    return json.loads(path.read_text(encoding="utf-8"))["accepts"] if path.is_file() else {}


def write_gated(artifact: Path, dest: Path, accepts: dict[str, list[list]], trims: dict[str, list[list]], signature: str) -> None:
    """dest/: a SavedModel whose `signature` checks (and pads) each input's named dims by ACCEPTS, calls the artifact's
    own signature, and trims its outputs by TRIMS (serving/padding.py's tables)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(artifact))
    fn = loaded.signatures[signature]
    specs = fn.structured_input_signature[1]  # {name: TensorSpec}
    names = sorted(specs)

    def fit(inputs: dict) -> tuple[dict, dict]:
        asked, checks = {}, []
        for name in names:
            for axis, dim, lo, hi, k, pad_from in accepts.get(name, []):
                n = tf.shape(inputs[name], out_type=tf.int64)[axis]
                where = f"input {name} axis {axis} ({dim}) has size {{}}"  # no quotes: Assert prints them escaped
                if dim in asked:  # two inputs must agree on a dim
                    checks.append(tf.debugging.Assert(tf.equal(n, asked[dim]), [tf.strings.format(where + f", another input has {dim} {{}}", (n, asked[dim]))]))
                    continue
                asked[dim] = n
                ok = (n >= (lo if pad_from is None else pad_from)) & (n <= hi)
                if pad_from is None:
                    ok &= tf.equal(n % (k or 1), 0)
                    said = accepted_text(lo, hi, k)
                else:
                    ok &= _padded(tf, n, lo, k) <= hi
                    said = f"any size in [{pad_from}, {hi}] (padded up to {accepted_text(lo, hi, k)})"
                checks.append(tf.debugging.Assert(ok, [tf.strings.format(where + f"; this model accepts {dim}: {said}", n)]))
        out = {}
        with tf.control_dependencies(checks):
            for name in names:
                x = tf.identity(inputs[name])
                for axis, dim, lo, _hi, k, pad_from in accepts.get(name, []):
                    if pad_from is not None:
                        grow = _padded(tf, asked[dim], lo, k) - asked[dim]
                        widths = tf.tensor_scatter_nd_update(tf.zeros([tf.rank(x), 2], tf.int64), [[axis, 1]], [grow])
                        x = tf.pad(x, widths)
                out[name] = x
        return out, asked

    class Gated(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = loaded  # tracked: its variables are saved with this module

        @tf.function(input_signature=[specs[n] for n in names])
        def serve(self, *args):
            inputs, asked = fit(dict(zip(names, args)))
            got = fn(**inputs)
            for name, rows in trims.items():
                for axis, dim in rows:
                    if name in got and dim in asked:
                        size = tf.tensor_scatter_nd_update(tf.shape(got[name], out_type=tf.int64), [[axis]], [asked[dim]])
                        got[name] = tf.slice(got[name], tf.zeros_like(size), size)
            return got

    module = Gated()
    tf.saved_model.save(module, str(dest), signatures={signature: module.serve})
    (dest / SIZES).parent.mkdir(parents=True, exist_ok=True)
    (dest / SIZES).write_text(json.dumps({"accepts": accepts, "trims": trims}) + "\n", encoding="utf-8")


def _padded(tf, n, lo: int, k: int | None):
    """The smallest accepted size >= n (serving/padding.py's padded_size without the upper bound), in TF ops."""
    k = k or 1
    return tf.maximum(tf.constant(lo, tf.int64), (n + k - 1) // k * k)

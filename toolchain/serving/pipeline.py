"""A Triton ensemble that takes raw inputs: <recipe>_pre (Python: text or image bytes to tensors), the served
artifact model itself (the fastest), and <recipe>_post (Python: outputs to an embedding, or labels and
scores), under <recipe>_pipeline. The artifact model stays as it is, for clients that send tensors.

    <recipe>_pipeline  input  TEXT  TYPE_STRING [1]   (text)    or  IMAGE TYPE_STRING [1]  (JPEG/PNG bytes)
                       output EMBEDDING TYPE_FP32 [-1]          or  LABELS TYPE_STRING [k], SCORES TYPE_FP32 [k], CLASS_IDS TYPE_INT64 [k]

The pre- and postprocessing models run toolchain/pipeline/runtime.py (copied as mlpack_pipeline.py), the
code the build judged end to end; their tensors take the dims and types of the artifact model's config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolchain import pipeline
from toolchain.pipeline import RAW_DIR, runtime
from toolchain.serving import protos

TEMPLATE = Path(__file__).with_name("pipeline_py.txt")
RUNTIME = Path(runtime.__file__)
ROLES = ("preprocess", "postprocess", "pipeline")


def pipeline_names(recipe_name: str) -> dict[str, str]:
    """<recipe>_pre, <recipe>_post, <recipe>_pipeline ('-' as '_'): the same names whichever target they wrap."""
    base = recipe_name.replace("-", "_")
    return {"preprocess": f"{base}_pre", "postprocess": f"{base}_post", "pipeline": f"{base}_pipeline"}


def _answer_outputs(cfg: dict) -> list[tuple[str, str, list[int]]]:
    if cfg["answer"] == "embedding":
        return [("EMBEDDING", "TYPE_FP32", [-1])]
    k = cfg["classify"]["top_k"]
    return [("LABELS", "TYPE_STRING", [k]), ("SCORES", "TYPE_FP32", [k]), ("CLASS_IDS", "TYPE_INT64", [k])]


def _python_model(repo: Path, name: str, version: int, role: str, cfg, comments: list[str], files: dict[str, Path | str]) -> Path:
    model_dir = repo / name
    vdir = model_dir / str(version)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    vdir.mkdir(parents=True)
    (vdir / "model.py").write_text(TEMPLATE.read_text(encoding="utf-8").replace("@ROLE@", role), encoding="utf-8")
    for fname, what in files.items():
        if isinstance(what, Path):
            shutil.copyfile(what, vdir / fname)
        else:
            (vdir / fname).write_text(what, encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(protos.to_text(cfg, comments), encoding="utf-8")
    return model_dir


def write_pipeline_models(repo: Path, recipe_name: str, model: str, version: int, artifact_config: str, build_root: Path, instances: int) -> dict[str, Path]:
    """Write <model>_pre, <model>_post and the <model>_pipeline ensemble around the served artifact model `model`
    (whose config.pbtxt text is `artifact_config`); the role -> model folder. ValueError when they cannot fit it."""
    stored = pipeline.load(build_root)
    if stored is None:
        raise ValueError(f"{build_root / pipeline.PIPELINE_JSON} is missing: the reference step did not run the pipeline")
    cfg = dict(stored.config)
    for k in ("texts", "images", "checks", "source_labels"):  # what the build judged, not what the models need
        cfg.pop(k, None)
    pb2 = protos.triton_pb2()
    art = protos.parse(artifact_config, pb2.ModelConfig())
    mbs = art.max_batch_size
    names = pipeline_names(recipe_name)
    # The artifact's tensors by the signature's names (config names may be INPUT__i): pair them by position.
    ins = dict(zip(cfg["inputs"], art.input))
    outs = dict(zip(cfg["output_names"], art.output))
    answer = cfg["answer"]
    want = cfg[answer]["output"]
    if want not in outs or len(ins) != len(cfg["inputs"]):
        raise ValueError(f"the served model {model} does not have the recipe's inputs {cfg['inputs']} and output '{want}'")
    raw_name = "TEXT" if cfg["modality"] == "text" else "IMAGE"
    raw_dims = [1] if mbs > 0 else [-1]
    dtype = pb2.DataType.Value
    instance = pb2.ModelInstanceGroup.Kind.Value("KIND_CPU")

    pre = pb2.ModelConfig(name=names["preprocess"], max_batch_size=mbs, backend="python")
    pre.input.add(name=raw_name, data_type=dtype("TYPE_STRING"), dims=raw_dims)
    for n, c in ins.items():
        pre.output.add(name=n, data_type=c.data_type, dims=list(c.dims))
    pre.instance_group.add(count=instances, kind=instance)
    files: dict[str, Path | str] = {"mlpack_pipeline.py": RUNTIME, "pipeline.json": json.dumps(cfg, indent=1) + "\n"}
    if cfg["modality"] == "text":
        files["tokenizer.json"] = build_root / RAW_DIR / "tokenizer.json"
    what = "text (UTF-8)" if cfg["modality"] == "text" else "encoded images (JPEG, PNG)"
    out = {"preprocess": _python_model(repo, names["preprocess"], 1, "preprocess", pre,
                                       [f"# mlpack preprocessing for {model}: {raw_name} holds {what}; outputs are {model}'s inputs."], files)}  # fmt: skip

    post = pb2.ModelConfig(name=names["postprocess"], max_batch_size=mbs, backend="python")
    post.input.add(name=want, data_type=outs[want].data_type, dims=list(outs[want].dims))
    mask = answer == "embedding" and cfg["embedding"]["pool"] == "mean"
    if mask:
        post.input.add(name="attention_mask", data_type=ins["attention_mask"].data_type, dims=list(ins["attention_mask"].dims))
    for n, t, d in _answer_outputs(cfg):
        post.output.add(name=n, data_type=dtype(t), dims=d)
    post.instance_group.add(count=instances, kind=instance)
    post_files = dict(files)
    post_files.pop("tokenizer.json", None)
    if (build_root / RAW_DIR / "labels.txt").is_file():
        post_files["labels.txt"] = build_root / RAW_DIR / "labels.txt"
    out["postprocess"] = _python_model(repo, names["postprocess"], 1, "postprocess", post,
                                       [f"# mlpack postprocessing for {model}: its '{want}' output to the answer ({answer})."], post_files)  # fmt: skip

    ens = pb2.ModelConfig(name=names["pipeline"], max_batch_size=mbs, platform="ensemble")
    ens.input.add(name=raw_name, data_type=dtype("TYPE_STRING"), dims=raw_dims)
    for n, t, d in _answer_outputs(cfg):
        ens.output.add(name=n, data_type=dtype(t), dims=d)
    step = ens.ensemble_scheduling.step.add(model_name=names["preprocess"], model_version=-1)
    step.input_map[raw_name] = raw_name
    for n in ins:
        step.output_map[n] = n
    step = ens.ensemble_scheduling.step.add(model_name=model, model_version=-1)
    for n, c in ins.items():
        step.input_map[c.name] = n
    step.output_map[outs[want].name] = want
    step = ens.ensemble_scheduling.step.add(model_name=names["postprocess"], model_version=-1)
    step.input_map[want] = want
    if mask:
        step.input_map["attention_mask"] = "attention_mask"
    for n, _, _ in _answer_outputs(cfg):
        step.output_map[n] = n
    model_dir = repo / names["pipeline"]
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)  # an ensemble has no files, but Triton wants its version folder
    comments = [f"# mlpack raw-input pipeline: {names['preprocess']} -> {model} -> {names['postprocess']}.",
                f"# Send {raw_name} as BYTES ({what}); {model} itself still takes tensors."]  # fmt: skip
    (model_dir / "config.pbtxt").write_text(protos.to_text(ens, comments), encoding="utf-8")
    out["pipeline"] = model_dir
    return out

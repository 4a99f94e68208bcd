"""serve-check of a text-generation folder an application embeds, with no server (ORT GenAI's: a kind whose
`embedded_runtime` is set): the prompts the build judged, as text, through the runtime's own tokenizer, generator
and greedy search (the kind's `text_generator`), against transformers' greedy tokens (parity/generation.npz)."""

from __future__ import annotations

import time
from pathlib import Path

from toolchain import kinds
from toolchain.errors import one_line
from toolchain.generation import GENERATION_FILE, load_prompt_texts, load_references, stream_agreement
from toolchain.records import Manifest
from toolchain.serving.results import CheckStatus, ModelCheck


def embedded_names() -> list[str]:
    """The names serve-check --only takes for embedded runtimes."""
    return sorted({k.embedded_runtime for k in kinds.kinds().values() if k.embedded_runtime})


def check_embedded(root: Path, manifest: Manifest, targets: list[str] | None, only: list[str] | None, progress) -> tuple[list[ModelCheck], dict]:
    """A check per target that built, of a kind with an embedded runtime; (checks, {runtime: why none ran})."""
    chosen = [t for t in manifest.targets if (rt := kinds.get(t.kind).embedded_runtime if t.kind in kinds.kinds() else None)
              and t.ok and (not targets or t.name in targets) and (not only or rt in only)]  # fmt: skip
    if not chosen:
        return [], {}
    texts = load_prompt_texts(root / GENERATION_FILE)
    if not texts:
        why = "the build kept no prompt texts (rebuild with this mlpack; a speech model's prompts are audio)"
        return [], {kinds.get(t.kind).embedded_runtime: why for t in chosen}
    return [_check(root, t, texts, progress) for t in chosen], {}


def _check(root: Path, target, texts: list[str], progress) -> ModelCheck:
    kind = kinds.get(target.kind)
    folder = root / Path(target.files[0].path).parent
    check = ModelCheck(target.name, kind.embedded_runtime, folder.name, kind.embedded_runtime)
    refs = load_references(root / GENERATION_FILE)
    progress.start(target.name, f"{target.name}: generating through {kind.embedded_runtime}")
    streams, stage = [], None
    try:
        t0 = time.perf_counter()
        generate = kind.text_generator(folder)
        check.load_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, (text, ref) in enumerate(zip(texts, refs)):
            ids, tokens, piece = generate(text, len(ref.tokens))
            if ids != list(ref.prompt) and stage is None:
                stage = f"stage tokenizer: {kind.embedded_runtime}'s tokenizer encodes prompt {i} as {ids[:8]}, the build's as {list(ref.prompt)[:8]}"
            streams.append((tokens, piece))
        check.infer_seconds, check.requests = time.perf_counter() - t0, len(streams)
    except Exception as e:  # noqa: BLE001 (the runtime's own error is the verdict)
        check.status, check.reason = CheckStatus.REFUSED, f"{kind.embedded_runtime} failed on {folder}: {one_line(e)}"
        progress.end(target.name, "refused", check.reason)
        return check
    agreement = stream_agreement([got for got, _ in streams], refs)
    total, same = agreement.total, agreement.equal
    # Where the build saw this artifact choose another token (reduced precision within its budget), free-running
    # generation may differ from there on: the tokens must equal the source's up to that step.
    divergences = target.generation.divergences if target.generation else []
    limits = [min([d.step for d in divergences if d.prompt == i] or [len(r.tokens)]) for i, r in enumerate(refs)]
    held = all(len(got) >= n and got[:n] == r.tokens[:n] for (got, _), r, n in zip(streams, refs, limits))
    check.generation = {"prompts": len(streams), "tokens": total, "token_match": round(same / max(total, 1), 6), "text": [t for _, t in streams],
                        "equal_up_to": limits}  # fmt: skip
    if held and stage is None:
        check.status = CheckStatus.OK
    else:
        check.status = CheckStatus.MISMATCH
        check.reason = (stage + "; " if stage else "") + (f"{kind.embedded_runtime}'s greedy tokens differ from the source's before the steps "
                                                          f"the build measured ({limits}); {same}/{total} equal")  # fmt: skip
    progress.end(target.name, check.status.value, f"{len(streams)} prompts as text, {same}/{total} greedy tokens as transformers' generate")
    return check

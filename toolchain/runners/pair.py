"""Two programs behind one runner: a prefill and a decode step, each call routed to the program that takes it."""

from __future__ import annotations

import numpy as np


class TwoPrograms:
    """An encoder-decoder's artifact (recipe/decoder.py): a call that brings the encoder's input (prompt ids, or a
    speech model's features) goes to the prefill program, every other to the decode program. Subclasses route
    otherwise (runners/aoti.py: by the number of new tokens)."""

    def __init__(self, prefill, decode):
        self.prefill, self.decode = prefill, decode

    def __enter__(self) -> TwoPrograms:
        self.prefill.__enter__()
        self.decode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.prefill.__exit__(*exc)
        self.decode.__exit__(*exc)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return (self.prefill if "encoder_input_ids" in feed or "input_features" in feed else self.decode).infer(feed)

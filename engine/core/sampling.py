"""Sampling settings and the presets shown in the GUI.

The values travel to the child process as a plain dict and become llama.cpp's native sampler
chain there (see ``engine.child.session``); nothing here touches the runtime, so the GUI and CLI
can validate and display settings without a model loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.core.errors import InvalidSettings

#: llama.cpp's LLAMA_DEFAULT_SEED: "pick a random seed".
RANDOM_SEED = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    """Temperature 0 means greedy decoding, which is deterministic for a given prompt."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int = RANDOM_SEED

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validated(self) -> SamplingParams:
        """Return self, or raise a one-line error naming the first impossible value."""
        if not (0.0 <= self.temperature <= 5.0):
            raise InvalidSettings(f"temperature must be between 0 and 5, not {self.temperature}")
        if self.top_k < 0:
            raise InvalidSettings(f"top-k must be 0 (off) or positive, not {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidSettings(f"top-p must be in (0, 1], not {self.top_p}")
        if not (0.0 <= self.min_p < 1.0):
            raise InvalidSettings(f"min-p must be in [0, 1), not {self.min_p}")
        if not (0.5 <= self.repeat_penalty <= 3.0):
            raise InvalidSettings(f"repeat penalty must be between 0.5 and 3, not {self.repeat_penalty}")
        if self.repeat_last_n < 0:
            raise InvalidSettings(f"repeat window must not be negative, not {self.repeat_last_n}")
        if not (0 <= self.seed <= 0xFFFFFFFF):
            raise InvalidSettings(f"seed must be between 0 and 4294967295, not {self.seed}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        """Build from stored or received settings, ignoring unknown keys from other versions."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        try:
            kwargs: dict[str, Any] = {
                k: (int(v) if isinstance(getattr(cls, k, None), int) else float(v)) for k, v in known.items()
            }
        except (TypeError, ValueError) as exc:
            raise InvalidSettings(f"bad sampling setting: {exc}") from None
        return cls(**kwargs).validated()


PRESETS: dict[str, SamplingParams] = {
    "Balanced": SamplingParams(),
    "Precise": SamplingParams(temperature=0.2, top_k=20, top_p=0.9, min_p=0.1, repeat_penalty=1.05),
    "Creative": SamplingParams(temperature=1.0, top_k=100, top_p=0.98, min_p=0.02, repeat_penalty=1.1),
    "Greedy (deterministic)": SamplingParams(
        temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0
    ),
}
DEFAULT_PRESET = "Balanced"

#: What an API request gets for every field it leaves out: llama-server's defaults, not OpenAI's
#: and not the GUI's Balanced preset. llama-server starts each request from its command-line
#: sampling (tools/server/server-schema.cpp, ``eval_llama_cmpl_schema``: ``params.sampling =
#: params_base.sampling``), which without options is ``common_params_sampling`` (common/common.h,
#: 0c1e570): temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, repeat penalty 1.0 (off) over the
#: last 64 tokens, no frequency or presence penalty. OpenAI's own defaults (temperature 1, top-p 1,
#: no top-k/min-p) are for OpenAI's models; clients pointed at a local server expect what
#: llama-server, the reference local server for GGUF models, gives them, and a benchmark that
#: sends only temperature and top-k then runs the same sampler chain on both (no penalty pass).
API_DEFAULTS = SamplingParams(
    temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, repeat_last_n=64
)

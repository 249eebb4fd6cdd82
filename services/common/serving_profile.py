"""How a BoigLLM checkpoint is to be served: which prompts it was trained on and how its
behaviour direction is read. The trainer writes it into the checkpoint, the describer reads it,
so a checkpoint is never served with prompts it has not learned."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SERVING_FILE = "boig_serving.json"

BehaviourScoring = Literal["discriminative", "generative"]


class ServingProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    retrieval: bool = Field(
        default=False,
        description=(
            "Content prompts carry the account's own past look at the target level (one "
            "history line, services.common.history); the describer supplies it from the "
            "ingested history, and describes without it for an account it has no history of."
        ),
    )
    fields: tuple[str, ...] = Field(
        default=(),
        description=(
            "The description lines the model was trained to write, in order (e.g. colors, "
            "tones, objects where the data has no captions). Set: the describer writes each "
            "key and the model fills its line ('fields' decoding), so a briefly tuned model "
            "can neither skip a line nor run past it. Empty: free decoding of the whole text."
        ),
    )
    behaviour: BehaviourScoring = Field(
        default="discriminative",
        description=(
            "discriminative: P(level word | behaviour prompt). generative: P(description | "
            "content prompt at each level, with that level's history line) ^ (1 / temperature) "
            "x the account's level prior, normalized over the levels (Bayes' rule through the "
            "content direction)."
        ),
    )
    temperature: float = Field(
        default=1.0,
        gt=0.0,
        description=(
            "Generative scoring: the summed log-likelihoods of a ~150-token description are "
            "divided by this before the softmax; fitted on the run's validation rows (held "
            "out of the training split) to the negative log-likelihood of the true level, "
            "since raw sums make over-confident posteriors."
        ),
    )

    @classmethod
    def read(cls, folder: Path) -> ServingProfile:
        """The folder's profile, or the base model's (no retrieval, discriminative)."""
        path = folder / SERVING_FILE
        if not path.is_file():
            return cls()
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def write(self, folder: Path) -> Path:
        path = folder / SERVING_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

"""BoigLLM's prompts, versioned in one place: the describer renders its requests from them and
the trainer renders its fine-tuning examples from them, so any change to a message here must
bump PROMPT_VERSION (it keys the result cache and checkpoint manifests).

Both directions are chat conversations rendered by the model's own chat template:
content simulation (context + target level -> verbalization text) and behaviour simulation
(context + verbalization text -> ``level: <low|medium|high>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict

from services.common.contracts import Context, KpiLevel, KpiTarget, Verbalization
from services.common.verbalization import render

PROMPT_VERSION = "describer-prompts-v4"


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


DESCRIBE_FIELDS: tuple[str, ...] = ("caption", "colors", "tones", "objects")
"""Lines the 'fields' decoding writes the keys of, in the renderer's order. ``text`` is left out:
an untuned model invents slogans, and the featurizer only reports text when OCR is enabled."""

FIELD_TOKEN_BUDGETS: dict[str, int] = {
    # Generous for a well-formed line (5 colours ~ 60 tokens) yet short enough that a model
    # stuck repeating itself gives up quickly; greedy decoding of a small model does loop.
    "caption": 32,
    "colors": 72,
    "tones": 20,
    "objects": 80,
}

FIELD_STOPS: dict[str, tuple[str, ...]] = {
    # A line ends at its newline, or where it drifts into another field's syntax (a small
    # model fills "objects:" with colour swatches): nothing after that point would parse.
    "caption": ("\n",),
    "colors": ("\n", "["),
    "tones": ("\n", "(", "%", ";", "["),
    "objects": ("\n", "(", "%"),
}

BEHAVIOUR_ANSWER_PREFIX = "level:"
"""The assistant turn of behaviour simulation starts with this; the level word follows it."""

_DESCRIBE_SYSTEM = (
    "You describe the image a social media post should use to reach a KPI level. "
    "Reply in exactly this format, one line per field:\n"
    "caption: <what the image shows>\n"
    "colors: <color> (<r>,<g>,<b>) <percent of image>%; ... (2 to 5 colors)\n"
    "tones: <warm|cool|neutral>, <dark|bright>, <high-contrast|low-contrast>, <saturated|muted>\n"
    "objects: <label> <confidence> [<x0>,<y0>,<x1>,<y1>]; ... (box corners from 0 to 1)"
)

_DESCRIBE_SYSTEM_TUNED = (
    "You describe the image a social media post should use to reach a KPI level, "
    "in the BoigLLM description format."
)
"""The compact content-simulation system line a fine-tuned BoigLLM is trained and served with:
the format and the examples are in its weights, and leaving them out of the prompt makes a
training example about a quarter as long (CPU fine-tuning time grows with tokens)."""

_BEHAVIOUR_SYSTEM = (
    "You predict how a social media post will perform. Given the post and a description of "
    "its image, answer with the KPI level it reaches: low, medium or high."
)

# Two short examples with different brands, levels and palettes: one example alone gets copied
# nearly verbatim by a 135M model; two show which parts vary with the context.
_EXAMPLES: tuple[tuple[Context, KpiTarget, str], ...] = (
    (
        Context(
            account="freshbrew",
            text="Start your Monday with our new cold brew",
            keywords=["coffee", "cold brew"],
            posted_at=datetime.fromisoformat("2024-03-04T08:00:00+00:00"),
        ),
        KpiTarget(name="likes", level=KpiLevel.HIGH),
        "caption: a glass of iced coffee on a wooden table in morning light\n"
        "colors: brown (120,80,50) 38%; white (240,236,228) 27%; orange (230,150,60) 12%\n"
        "tones: warm, bright, high-contrast, saturated\n"
        "objects: cup 0.92 [0.35,0.20,0.65,0.90]; dining table 0.81 [0.00,0.62,1.00,1.00]",
    ),
    (
        Context(
            account="peakgear",
            text="Winter sale: 30% off all jackets",
            keywords=["sale", "jackets"],
            posted_at=datetime.fromisoformat("2023-12-09T17:30:00+00:00"),
        ),
        KpiTarget(name="likes", level=KpiLevel.LOW),
        "caption: a hiker in a dark jacket standing on a grey mountain ridge\n"
        "colors: gray (128,128,130) 52%; navy (30,40,80) 24%; red (200,30,40) 6%\n"
        "tones: cool, dark, low-contrast, muted\n"
        "objects: person 0.88 [0.38,0.15,0.62,0.95]; backpack 0.64 [0.45,0.30,0.60,0.55]",
    ),
)


def format_context(context: Context) -> str:
    """The context as compact ``key: value`` lines; user text is flattened to one line each so
    that it can never start a line that looks like part of the answer."""
    lines = [f"account: {context.account}"]
    if context.posted_at is not None:
        lines.append(f"posted: {context.posted_at:%A %Y-%m-%d %H:%M} UTC")
    text = _one_line(context.text)
    if text:
        lines.append(f"text: {text}")
    keywords = [_one_line(keyword) for keyword in context.keywords]
    if any(keywords):
        lines.append("keywords: " + ", ".join(keyword for keyword in keywords if keyword))
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe_user(context: Context, target: KpiTarget, history: str | None = None) -> str:
    lines = [format_context(context)]
    if history:
        lines.append(history)
    lines.append(f"goal: {target.level.value} {target.name}")
    return "\n".join(lines)


def describe_messages(
    context: Context, target: KpiTarget, *, few_shot: bool = True, history: str | None = None
) -> list[ChatMessage]:
    """Content simulation prompt. ``few_shot`` (for a base model): the system format spec and
    two worked examples before the request. Without (for a model fine-tuned on this compact
    form, see FinetuneConfig.few_shot_prompt): one system line and the request. ``history``
    (retrieval augmentation): the account's own past look at the target level, one line from
    ``services.common.history``, placed before the goal."""
    if not few_shot:
        return [
            {"role": "system", "content": _DESCRIBE_SYSTEM_TUNED},
            {"role": "user", "content": _describe_user(context, target, history)},
        ]
    messages: list[ChatMessage] = [{"role": "system", "content": _DESCRIBE_SYSTEM}]
    for example_context, example_target, answer in _EXAMPLES:
        messages.append(
            {"role": "user", "content": _describe_user(example_context, example_target)}
        )
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": _describe_user(context, target, history)})
    return messages


def describe_completion(verbalization: Verbalization) -> str:
    """The assistant answer a fine-tuned model is trained to give for ``describe_messages``."""
    return render(verbalization)


def behaviour_messages(
    context: Context,
    kpi_name: str,
    verbalization_text: str,
    histories: Sequence[str] = (),
) -> list[ChatMessage]:
    """Behaviour simulation prompt; the answer is ``BEHAVIOUR_ANSWER_PREFIX`` + a level.
    ``histories``: the account's past look at each level (one line per level), so that the
    model can compare the image with them."""
    lines = [format_context(context), *histories]
    user = "\n".join(lines) + f"\nimage:\n{verbalization_text}\nKPI: {kpi_name}"
    return [{"role": "system", "content": _BEHAVIOUR_SYSTEM}, {"role": "user", "content": user}]


def behaviour_completion(level: KpiLevel) -> str:
    """The assistant answer for ``behaviour_messages``: ``level: high``."""
    return BEHAVIOUR_ANSWER_PREFIX + level_continuation(level)


def level_continuation(level: KpiLevel) -> str:
    # The space belongs to the level word, as BPE vocabularies merge it ("Ġhigh"); the prompt
    # ends at "level:" so that each level is scored from the same position.
    return f" {level.value}"


def render_plain_chat(messages: list[ChatMessage], *, bos_token: str | None = None) -> str:
    """Fallback for tokenizers without a chat template: a plain transcript ending in an open
    assistant turn. Starts with the BOS text because backends encode without special tokens."""
    parts = [bos_token or ""]
    for message in messages:
        parts.append(f"### {message['role']}\n{message['content']}\n\n")
    parts.append("### assistant\n")
    return "".join(parts)


def chat_prompt(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The prompt text a model reads: its chat template with an open assistant turn, or the
    plain transcript for tokenizers without one. The describer serves and the trainer trains
    on exactly this text."""
    if getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return render_plain_chat(messages, bos_token=tokenizer.bos_token)

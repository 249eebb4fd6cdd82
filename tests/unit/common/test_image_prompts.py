"""Target description -> SD prompt, low-KPI look -> negative prompt: exact strings, and long
descriptions kept inside CLIP's 75 prompt tokens."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.common.clip_tokenizer import clip_bpe_path, write_clip_tokenizer
from services.common.contracts import ColorSwatch, Context, DetectedObject, Tone, Verbalization
from services.common.image_prompts import (
    CLIP_PROMPT_TOKENS,
    estimate_clip_tokens,
    object_position,
    object_size,
    render_negative_prompt,
    render_prompt,
)

CONTEXT = Context(account="acme", text="Spring sale on running shoes", keywords=["running", "city"])


def swatch(name: str, coverage: float) -> ColorSwatch:
    return ColorSwatch(name=name, rgb=(128, 128, 128), coverage=coverage)


def thing(
    label: str, box: tuple[float, float, float, float], confidence: float = 0.9
) -> DetectedObject:
    return DetectedObject(label=label, confidence=confidence, box=box)


@pytest.fixture(scope="module")
def clip_tokens(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], int]:
    folder = tmp_path_factory.mktemp("clip") / "tokenizer"
    tokenizer = write_clip_tokenizer(folder, clip_bpe_path())

    def count(text: str) -> int:
        return len(tokenizer.tokenize(text))

    return count


def test_full_description_most_important_first() -> None:
    description = Verbalization(
        caption="a runner on a city street at dusk",
        colors=[
            swatch("navy", 0.41),
            swatch("white", 0.3),
            swatch("orange", 0.1),
            swatch("grey", 0.04),
        ],
        tones=[Tone.DARK, Tone.COOL],
        objects=[thing("person", (0.1, 0.2, 0.45, 0.95))],
        text="Just do it",
    )
    assert render_prompt(description, CONTEXT) == (
        "a runner on a city street at dusk, a large person at middle left, navy background, "
        "accents of white and orange, cool dark tones, running, city"
    )


def test_without_a_caption_the_post_text_leads() -> None:
    description = Verbalization(
        colors=[
            swatch("beige", 0.45),
            swatch("brown", 0.2),
            swatch("beige", 0.15),
            swatch("peach", 0.1),
        ],
        objects=[
            thing("circle", (0.8, 0.05, 0.95, 0.2)),  # small, top right
            thing("umbrella", (0.35, 0.35, 0.65, 0.65), confidence=0.5),  # medium, centre
            thing("square", (0.0, 0.7, 0.6, 1.0)),  # medium but the largest, bottom left
        ],
        tones=[Tone.WARM],
    )
    context = Context(account="acme", text="  Spring   sale\non shoes ")
    assert render_prompt(description, context) == (
        "Spring sale on shoes, a square at bottom left, an umbrella in the centre, "
        "a small circle at top right, mostly beige background, accents of brown and peach, "
        "warm tones"
    )


def test_an_empty_description_gives_an_empty_prompt() -> None:
    assert render_prompt(Verbalization(), Context(account="acme")) == ""


def test_duplicate_objects_and_keywords_are_said_once_and_objects_capped() -> None:
    description = Verbalization(
        objects=[thing("star", (0.0, 0.0, 0.1, 0.1)) for _ in range(3)]
        + [thing(f"shape{index}", (0.35, 0.35, 0.65, 0.65)) for index in range(6)]
    )
    context = Context(account="acme", keywords=["Sale", "sale", "new  in"])
    prompt = render_prompt(description, context)
    assert prompt.count("star") == 0  # five larger objects come first
    assert prompt == (
        "a shape0 in the centre, a shape1 in the centre, a shape2 in the centre, "
        "a shape3 in the centre, a shape4 in the centre, Sale, new in"
    )


@pytest.mark.parametrize(
    ("box", "position", "size"),
    [
        ((0.0, 0.0, 0.2, 0.2), "top left", "small"),
        ((0.4, 0.0, 0.6, 0.3), "top centre", None),
        ((0.0, 0.3, 1.0, 0.7), "centre", "large"),
        ((0.7, 0.4, 0.9, 0.6), "middle right", "small"),
        ((0.5, 0.8, 1.0, 1.0), "bottom right", None),
    ],
)
def test_position_and_size_come_from_the_box(
    box: tuple[float, float, float, float], position: str, size: str | None
) -> None:
    assert object_position(thing("x", box)) == position
    assert object_size(thing("x", box)) == size


def test_negative_prompt_is_the_low_kpi_look() -> None:
    low = Verbalization(
        caption="a grey office",
        colors=[swatch("grey", 0.6), swatch("brown", 0.2)],
        tones=[Tone.MUTED, Tone.DARK],
        objects=[thing("text", (0.0, 0.0, 0.2, 0.1)), thing("person", (0.2, 0.2, 0.8, 0.8))],
    )
    assert render_negative_prompt(low) == (
        "mostly grey background, accents of brown, dark, muted, person, text"
    )


def test_negative_prompt_leaves_out_what_the_target_also_has() -> None:
    low = Verbalization(
        colors=[swatch("grey", 0.6), swatch("brown", 0.2)],
        tones=[Tone.MUTED, Tone.DARK],
        objects=[thing("person", (0.2, 0.2, 0.8, 0.8))],
    )
    target = Verbalization(colors=[swatch("grey", 0.3)], tones=[Tone.DARK], objects=[])
    assert render_negative_prompt(low, target=target) == "brown background, muted, person"


def test_an_empty_low_description_gives_no_negative_prompt() -> None:
    assert render_negative_prompt(Verbalization(caption="anything")) == ""


def long_description() -> tuple[Verbalization, Context]:
    caption = " ".join(["an extraordinarily photogenic composition of sneakers"] * 6)[:300]
    description = Verbalization(
        caption=caption,
        colors=[swatch(f"color{index}", 0.08) for index in range(12)],
        tones=[Tone.WARM, Tone.BRIGHT, Tone.HIGH_CONTRAST, Tone.SATURATED],
        objects=[thing(f"object{index}", (0.1, 0.1, 0.9, 0.9)) for index in range(50)],
    )
    context = Context(account="acme", keywords=[f"keyword{index}" for index in range(20)])
    return description, context


def test_long_descriptions_stay_within_clips_window(clip_tokens: Callable[[str], int]) -> None:
    description, context = long_description()
    for prompt in (
        render_prompt(description, context),
        render_negative_prompt(description),
    ):
        assert 0 < clip_tokens(prompt) <= CLIP_PROMPT_TOKENS
    assert render_negative_prompt(description).endswith(", object3, object4")  # 5 at most
    # the caption is cut at a word boundary, never mid-word
    subject = render_prompt(description, context).split(", ")[0]
    assert description.caption is not None
    assert description.caption.startswith(subject)
    assert description.caption[len(subject)] == " "


def test_an_exact_token_counter_fills_the_window_exactly(clip_tokens: Callable[[str], int]) -> None:
    description, context = long_description()
    estimated = render_prompt(description, context)
    exact = render_prompt(description, context, count_tokens=clip_tokens)
    assert clip_tokens(estimated) <= clip_tokens(exact) <= CLIP_PROMPT_TOKENS
    assert clip_tokens(exact) > CLIP_PROMPT_TOKENS - 10


@pytest.mark.parametrize(
    "text",
    [
        "a runner on a city street at dusk, a large person at middle left",
        "mostly beige background, accents of brown and peach, warm bright high-contrast tones",
        "Spring sale!!! 50% off, café crème, smartwatch, unpronounceablewordzz",
    ],
)
def test_the_estimate_never_undercounts(clip_tokens: Callable[[str], int], text: str) -> None:
    assert estimate_clip_tokens(text) >= clip_tokens(text)

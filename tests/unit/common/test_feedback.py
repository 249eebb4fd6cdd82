"""The feedback store: one record per key, account, creative and KPI; replays, conflicts and
corrections; pages of a key's records; an account's records for the trainer.

Runs on SQLite and on the real PostgreSQL (marked), like every store test.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from services.common.contracts import Context
from services.common.db import Database
from services.common.errors import Conflict, NotFound
from services.common.feedback import (
    FeedbackStore,
    NewFeedback,
    RecordOutcome,
    observation_fingerprint,
)

POSTED = datetime(2024, 5, 1, 12, tzinfo=UTC)


@pytest.fixture
def store(database: Database) -> FeedbackStore:
    return FeedbackStore(database)


def observation(
    *,
    owner: str = "k1",
    account: str = "acme",
    creative: str = "a",
    kpi_name: str = "likes",
    kpi_value: float = 120.0,
    posted_at: datetime = POSTED,
    text: str = "summer sale",
    image_id: str | None = None,
) -> NewFeedback:
    sha = creative * 64 if len(creative) == 1 else creative
    return NewFeedback(
        owner=owner,
        context=Context(account=account, text=text, posted_at=posted_at),
        kpi_name=kpi_name,
        kpi_value=kpi_value,
        creative_sha256=sha,
        artifact_key=f"feedback/{sha}.png",
        width=64,
        height=48,
        image_id=image_id,
    )


def test_a_new_observation_is_recorded_with_its_context(store: FeedbackStore) -> None:
    feedback, outcome = store.record(observation(image_id="job-1"), correction=False)
    assert outcome is RecordOutcome.CREATED
    assert feedback.revision == 1 and feedback.created_at == feedback.updated_at
    again = store.get(feedback.id, owner="k1")
    assert again == feedback
    assert again.context.posted_at == POSTED and again.posted_at.tzinfo is not None
    assert (again.kpi_value, again.image_id, again.width, again.height) == (120.0, "job-1", 64, 48)
    record = again.as_record()
    assert record.creative_sha256 == "a" * 64 and record.kpi_name == "likes"


def test_the_same_observation_again_is_the_same_record(store: FeedbackStore) -> None:
    first, _ = store.record(observation(), correction=False)
    again, outcome = store.record(observation(), correction=False)
    assert outcome is RecordOutcome.REPLAYED
    assert again == first
    # A correction that changes nothing is a replay too: no new revision.
    same, outcome = store.record(observation(), correction=True)
    assert (outcome, same.revision) == (RecordOutcome.REPLAYED, 1)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"kpi_value": 95.0}, "value 120, not 95"),
        ({"text": "winter sale"}, "another context"),
        ({"posted_at": POSTED + timedelta(days=1)}, "another context"),
    ],
)
def test_another_observation_of_a_recorded_creative_is_a_conflict(
    store: FeedbackStore, change: dict[str, object], says: str
) -> None:
    first, _ = store.record(observation(), correction=False)
    with pytest.raises(Conflict) as refused:
        store.record(observation(**change), correction=False)  # type: ignore[arg-type]
    assert says in refused.value.message
    assert first.id in refused.value.message and '"correction": true' in refused.value.message
    assert store.get(first.id, owner="k1") == first  # unchanged


def test_a_correction_replaces_value_and_context_and_counts_a_revision(
    store: FeedbackStore,
) -> None:
    first, _ = store.record(observation(image_id="job-1"), correction=False)
    later = POSTED + timedelta(hours=2)
    fixed, outcome = store.record(observation(kpi_value=95.5, posted_at=later), correction=True)
    assert outcome is RecordOutcome.CORRECTED
    assert (fixed.id, fixed.revision, fixed.kpi_value) == (first.id, 2, 95.5)
    assert fixed.context.posted_at == later
    assert fixed.image_id == "job-1"  # the generated image it named is kept
    assert fixed.created_at == first.created_at and fixed.updated_at >= first.updated_at
    assert store.get(first.id, owner="k1") == fixed


def test_a_correction_of_nothing_recorded_records_it(store: FeedbackStore) -> None:
    feedback, outcome = store.record(observation(), correction=True)
    assert (outcome, feedback.revision) == (RecordOutcome.CREATED, 1)


def test_the_record_key_is_owner_account_creative_and_kpi(store: FeedbackStore) -> None:
    base, _ = store.record(observation(), correction=False)
    others = [
        observation(owner="k2", kpi_value=1.0),
        observation(account="globex", kpi_value=2.0),
        observation(creative="b", kpi_value=3.0),
        observation(kpi_name="clicks", kpi_value=4.0),
    ]
    recorded = [store.record(new, correction=False) for new in others]
    assert all(outcome is RecordOutcome.CREATED for _, outcome in recorded)
    assert len({base.id, *(feedback.id for feedback, _ in recorded)}) == 5


def test_the_fingerprint_is_the_observation_not_its_spelling() -> None:
    naive = Context(account="acme", posted_at=datetime(2024, 5, 1, 12))
    aware = Context(
        account="acme", posted_at=datetime(2024, 5, 1, 14, tzinfo=UTC) - timedelta(hours=2)
    )
    assert observation_fingerprint(naive, 120) == observation_fingerprint(aware, 120.0)
    assert observation_fingerprint(naive, 120) != observation_fingerprint(naive, 121)


def test_racing_reports_of_one_observation_make_one_record(store: FeedbackStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.record(observation(), correction=False), range(16)))
    assert len({feedback.id for feedback, _ in results}) == 1
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count(RecordOutcome.CREATED) == 1
    assert outcomes.count(RecordOutcome.REPLAYED) == 15


def test_racing_corrections_each_apply_once(store: FeedbackStore) -> None:
    first, _ = store.record(observation(), correction=False)
    values = [float(value) for value in range(1, 13)]
    with ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(lambda v: store.record(observation(kpi_value=v), correction=True), values)
        )
    applied = [outcome for _, outcome in results if outcome is RecordOutcome.CORRECTED]
    final = store.get(first.id, owner="k1")
    # Every correction either applied on top of the one before it or found its value there.
    assert final.revision == 1 + len(applied)
    assert final.kpi_value in values


def test_another_owners_record_is_not_found(store: FeedbackStore) -> None:
    feedback, _ = store.record(observation(), correction=False)
    with pytest.raises(NotFound):
        store.get(feedback.id, owner="k2")
    with pytest.raises(NotFound):
        store.get("no-such-feedback", owner="k1")


def test_pages_are_newest_first_and_the_cursor_walks_them_all(store: FeedbackStore) -> None:
    ids = [
        store.record(observation(creative=c, kpi_value=i), correction=False)[0].id
        for i, c in enumerate("abcde")
    ]
    store.record(observation(owner="k2", creative="f"), correction=False)
    seen, before, pages = [], None, 0
    while True:
        items, before = store.page(owner="k1", limit=2, before=before)
        seen += [item.id for item in items]
        pages += 1
        if before is None:
            break
    assert seen == ids[::-1] and pages == 3
    # Exactly a page's worth left: no empty page after it.
    items, before = store.page(owner="k1", limit=5)
    assert len(items) == 5 and before is None


def test_pages_filter_by_account_kpi_and_creative(store: FeedbackStore) -> None:
    store.record(observation(creative="a"), correction=False)
    store.record(observation(creative="b", account="globex"), correction=False)
    store.record(observation(creative="a", kpi_name="clicks"), correction=False)

    def found(**filters: str) -> list[tuple[str, str, str]]:
        items, _ = store.page(owner="k1", limit=10, **filters)
        return [(i.context.account, i.creative_sha256[0], i.kpi_name) for i in items]

    assert found(account="globex") == [("globex", "b", "likes")]
    assert found(kpi_name="clicks") == [("acme", "a", "clicks")]
    assert found(creative_sha256="a" * 64) == [("acme", "a", "clicks"), ("acme", "a", "likes")]
    assert found(account="acme", kpi_name="likes") == [("acme", "a", "likes")]
    assert store.page(owner="k2", limit=10) == ([], None)


def test_an_accounts_records_for_the_trainer_oldest_post_first(store: FeedbackStore) -> None:
    day = timedelta(days=1)
    store.record(observation(creative="a", posted_at=POSTED + 2 * day), correction=False)
    store.record(observation(creative="b", posted_at=POSTED), correction=False)
    store.record(observation(creative="c", owner="k2", posted_at=POSTED + day), correction=False)
    store.record(observation(creative="d", account="globex"), correction=False)
    store.record(observation(creative="e", kpi_name="clicks"), correction=False)

    def creatives(**options: object) -> str:
        return "".join(f.creative_sha256[0] for f in store.for_account("acme", **options))  # type: ignore[arg-type]

    assert creatives() == "beca"  # e was posted at POSTED too, recorded after b
    assert creatives(owners=["k1"]) == "bea"
    assert creatives(kpi_name="likes") == "bca"
    assert creatives(posted_since=POSTED + day) == "ca"
    # A naive bound is UTC, as a naive post time is.
    assert creatives(posted_since=datetime(2024, 5, 2, 12)) == "ca"


def test_a_record_without_a_post_time_is_refused(store: FeedbackStore) -> None:
    new = observation()
    no_time = dataclasses.replace(new, context=new.context.model_copy(update={"posted_at": None}))
    with pytest.raises(ValueError, match="posted_at"):
        store.record(no_time, correction=False)

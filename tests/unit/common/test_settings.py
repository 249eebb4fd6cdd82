"""BatchLimits: one batch limit, read under one name by every service, with one refusal."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.contracts import MAX_BATCH_IMAGES
from services.common.errors import InvalidInput
from services.common.settings import BatchLimits
from services.describer.settings import DescriberSettings
from services.featurizer.settings import FeaturizerSettings
from services.gateway.settings import GatewaySettings
from services.scorer.settings import ScorerSettings


def test_every_batch_taking_service_reads_the_one_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOIG_BATCH_MAX_ITEMS", "7")
    limits = {
        "gateway": GatewaySettings().batch_limits,
        "scorer": ScorerSettings().batch_limits,
        "featurizer": FeaturizerSettings().batch_limits,
        "describer": DescriberSettings().batch_limits,
    }
    assert {service: limit.max_items for service, limit in limits.items()} == dict.fromkeys(
        limits, 7
    )


def test_the_default_fits_a_generation_job() -> None:
    # The generator scores a job's 32 candidates (its default at most) in one scorer request.
    assert BatchLimits().max_items == 32


@pytest.mark.parametrize("value", [0, MAX_BATCH_IMAGES + 1])
def test_limits_outside_the_contract_are_refused(value: int) -> None:
    with pytest.raises(ValidationError, match="max_items"):
        BatchLimits(max_items=value)


def test_check_refuses_only_more_than_the_limit() -> None:
    limits = BatchLimits(max_items=3)
    limits.check(3, "creatives")
    with pytest.raises(InvalidInput, match=r"^4 creatives in one request; the limit is 3$"):
        limits.check(4, "creatives")

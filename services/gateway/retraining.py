"""The gateway's side of retraining: the checkpoints and the decisions the training worker
recorded, read back for any key (they are the deployment's, not one key's)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from services.common.contracts import (
    CheckpointList,
    RetrainDecision,
    RetrainDecisionFilter,
    RetrainDecisionPage,
)
from services.common.retraining import RetrainLedger
from services.gateway.cursors import decode_cursor, encode_cursor

_CURSOR_PREFIX = "d1:"


class RetrainRecords:
    def __init__(self, ledger: RetrainLedger) -> None:
        self.ledger = ledger

    async def checkpoints(self, name: str) -> CheckpointList:
        return await run_in_threadpool(self.ledger.versions, name)

    async def decision(self, decision_id: str) -> RetrainDecision:
        stored = await run_in_threadpool(self.ledger.get, decision_id)
        return stored.decision

    async def page(self, query: RetrainDecisionFilter) -> RetrainDecisionPage:
        before = (
            decode_cursor(query.cursor, prefix=_CURSOR_PREFIX) if query.cursor is not None else None
        )
        items, next_before = await run_in_threadpool(
            lambda: self.ledger.page(
                limit=query.limit,
                before=before,
                checkpoint=query.checkpoint,
                action=query.action,
            )
        )
        return RetrainDecisionPage(
            items=[item.decision for item in items],
            next_cursor=(
                encode_cursor(next_before, prefix=_CURSOR_PREFIX)
                if next_before is not None
                else None
            ),
        )

"""boig-client: the BOIG public API from Python, sync and async, typed with the wire contracts.

    from boig_client import BoigClient

    with BoigClient("http://127.0.0.1:8100", api_key) as boig:
        ranking = boig.score({"account": "acme"}, {"level": "high"}, ["a.png", "b.jpg"])
        job = boig.generate({"account": "acme", "text": "summer sale"}, count=2)
        status = boig.wait(job, progress=True)

The request and answer models are ``boig_client.contracts`` (the services' own module), the
exceptions ``boig_client.errors`` (one per error ``type`` the gateway answers with).
"""

from boig_client.calls import Creatives, CreativeSource, SavableImage
from boig_client.client import AsyncBoigClient, BoigClient, __version__
from boig_client.contracts import (
    CheckpointList,
    Context,
    DescribeResponse,
    FeedbackPage,
    FeedbackRecord,
    JobAccepted,
    JobState,
    JobStatus,
    KpiLevel,
    KpiTarget,
    RetrainDecision,
    RetrainDecisionPage,
    ScoreResponse,
)
from boig_client.errors import (
    BackendError,
    BoigError,
    Conflict,
    InvalidImage,
    InvalidInput,
    ModelOutputError,
    ModelUnavailable,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    TimeLimitExceeded,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
    WorkerLost,
)
from boig_client.retries import RetryPolicy

__all__ = [
    "AsyncBoigClient",
    "BackendError",
    "BoigClient",
    "BoigError",
    "CheckpointList",
    "Conflict",
    "Context",
    "CreativeSource",
    "Creatives",
    "DescribeResponse",
    "FeedbackPage",
    "FeedbackRecord",
    "InvalidImage",
    "InvalidInput",
    "JobAccepted",
    "JobState",
    "JobStatus",
    "KpiLevel",
    "KpiTarget",
    "ModelOutputError",
    "ModelUnavailable",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "RetrainDecision",
    "RetrainDecisionPage",
    "RetryPolicy",
    "SavableImage",
    "ScoreResponse",
    "TimeLimitExceeded",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamError",
    "WorkerLost",
    "__version__",
]

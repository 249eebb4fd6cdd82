"""The shared logging setup: text lines by default, or one JSON object per line with the request
id (a Celery task's job id) and the service, chosen by each process's ``log_format`` setting."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from services.common import logging as boig_logging
from services.common.logging import configure_logging, current_service, request_id_var
from services.common.queue import _tag_task, _untag_task
from services.common.settings import ServiceSettings
from services.generator.settings import GeneratorSettings
from services.trainer.settings import TrainerSettings

logger = logging.getLogger("services.tests.logging")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(boig_logging, "_service", boig_logging._service)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # each line one object, or this fails


def test_json_lines_carry_time_level_logger_message_request_id_and_service(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", service="scorer", log_format="json")
    logger.info("scored %d creatives in %.1f s", 3, 1.25)
    token = request_id_var.set("req-42")
    try:
        logger.warning('a "quoted"\nmulti-line message')
    finally:
        request_id_var.reset(token)
    logger.debug("below the level")

    first, second = json_lines(capsys.readouterr().err)
    assert set(first) == {"time", "level", "logger", "message", "request_id", "service"}
    assert first["level"] == "INFO" and first["logger"] == "services.tests.logging"
    assert first["message"] == "scored 3 creatives in 1.2 s"
    assert first["request_id"] is None and first["service"] == "scorer"
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert second["message"] == 'a "quoted"\nmulti-line message'
    assert second["request_id"] == "req-42" and second["level"] == "WARNING"


def test_a_json_line_carries_the_traceback_of_an_exception(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", service="describer", log_format="json")
    try:
        raise ValueError("the model file is damaged")
    except ValueError:
        logger.exception("could not load the model")

    [line] = json_lines(capsys.readouterr().err)
    assert line["level"] == "ERROR" and line["message"] == "could not load the model"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: the model file is damaged" in line["exc_info"]


def test_a_celery_task_s_lines_carry_its_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="generator", log_format="json")
    _tag_task(task_id="job-7")
    try:
        logger.info("job started")
    finally:
        _untag_task(task_id="job-7")
    logger.info("idle")

    started, idle = json_lines(capsys.readouterr().err)
    assert started["request_id"] == "job-7" and started["service"] == "generator"
    assert idle["request_id"] is None


def test_python_warnings_become_json_lines_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="generator", log_format="json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a deprecated option", DeprecationWarning, stacklevel=1)
    [line] = json_lines(capsys.readouterr().err)
    assert line["logger"] == "py.warnings" and "a deprecated option" in line["message"]


def test_text_stays_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="gateway")
    token = request_id_var.set("req-1")
    try:
        logger.info("hello %s", "there")
    finally:
        request_id_var.reset(token)
    line = capsys.readouterr().err.strip()
    assert line.endswith("INFO gateway [req-1] services.tests.logging: hello there")
    assert current_service() == "gateway"


def test_configuring_again_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="featurizer")
    configure_logging("INFO", service="featurizer", log_format="json")
    logger.info("once")
    [line] = json_lines(capsys.readouterr().err)
    assert line["message"] == "once"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", service="gateway", log_format="xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings_class", "variable"),
    [
        (ServiceSettings, "BOIG_LOG_FORMAT"),
        (GeneratorSettings, "BOIG_GENERATOR_LOG_FORMAT"),
        (TrainerSettings, "BOIG_TRAINER_LOG_FORMAT"),
    ],
)
def test_every_process_s_settings_choose_the_format(
    settings_class: type[Any], variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_class().log_format == "text"
    monkeypatch.setenv(variable, "json")
    assert settings_class().log_format == "json"
    monkeypatch.setenv(variable, "yaml")
    with pytest.raises(ValueError, match="log_format"):
        settings_class()

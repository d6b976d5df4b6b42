"""What a failure makes the pipeline do is decided by its error class, in one place each.

A lost compare-and-swap race or an outage is retried (by Airflow, via the task's retries); bad
input fails at once; the versions app answers with the status the class implies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from glassfinder import layout
from glassfinder.embed.model import ModelConfig, build_model
from glassfinder.embed.registry import current_sha, publish_model, set_current
from glassfinder.errors import (
    BadInputError,
    GlassFinderError,
    ObjectNotFoundError,
    ParamError,
    PointerConflictError,
    RetryableError,
    StaleWriteError,
    StoreUnavailableError,
    VersionNotFoundError,
    http_status,
)
from glassfinder.pipeline.tasks import _fail_fast
from glassfinder.store import LocalStore


class RacingStore(LocalStore):
    """A real local store where another publisher moves one pointer just before our swap."""

    def __init__(self, root: Path, pointer: str, rival: bytes) -> None:
        super().__init__(root)
        self.pointer, self.rival, self.raced = pointer, rival, False

    def put(self, key: str, data: Any, **kwargs: Any) -> Any:
        if key == self.pointer and kwargs.get("if_match") and not self.raced:
            self.raced = True
            super().put(key, self.rival)  # the other publisher wins this round
        return super().put(key, data, **kwargs)


def test_a_model_pointer_race_is_a_retryable_conflict_and_the_retry_succeeds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = LocalStore(tmp_path)
    first = publish_model(plain, "glasses", build_model(ModelConfig(), seed=0).eval(), {"note": "first"})
    second = publish_model(plain, "glasses", build_model(ModelConfig(), seed=1).eval(), {"note": "second"})
    set_current(plain, "glasses", first)
    rival = plain.get(layout.model_current_key("glasses"))
    racing = RacingStore(tmp_path, layout.model_current_key("glasses"), rival)
    with pytest.raises(PointerConflictError, match="moved while publishing") as caught:
        set_current(racing, "glasses", second)
    assert isinstance(caught.value, RetryableError)
    set_current(racing, "glasses", second)  # what the task's retry does
    assert current_sha(plain, "glasses")[0] == second


def _raising(exc: Exception) -> Any:
    @_fail_fast
    def task() -> None:
        raise exc

    return task


@pytest.mark.parametrize(
    "exc",
    [
        PointerConflictError("CURRENT moved"),
        StaleWriteError("etag changed"),
        StoreUnavailableError("store down after 5 attempts"),
    ],
)
def test_retryable_failures_are_left_to_airflow_retries(exc: Exception) -> None:
    with pytest.raises(type(exc)):
        _raising(exc)()


def test_bad_input_fails_the_task_at_once_in_the_dag_s_words(airflow_home: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="the force_reason param"):
        _raising(GlassFinderError("gate refused; pass {option:force}"))()
    with pytest.raises(AirflowFailException, match="ParamError"):
        _raising(ParamError("param 'epochs' must be >= 1"))()
    assert str(GlassFinderError("pass {option:force}")) == "pass --force with --reason"


def test_http_status_follows_the_error_class() -> None:
    assert http_status(ObjectNotFoundError("no such key")) == 404
    assert http_status(VersionNotFoundError("index catalog v9 has no manifest")) == 404
    assert http_status(StoreUnavailableError("down")) == 503
    assert http_status(PointerConflictError("raced")) == 503
    assert http_status(BadInputError("bad name")) == 400
    assert http_status(GlassFinderError("unexpected")) == 500

"""Stacking requests into one model run and splitting the outputs (cortexd/replica/stacking.py),
and gathering a predictor class's client calls into that run (cortexd/replica/gather.py),
with a fake numpy model: every rule without onnxruntime."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from cortexd.replica.gather import Gatherer, GatheringClient
from cortexd.replica.predictors import PayloadError
from cortexd.replica.stacking import groups, rows_of, run_stacked


class Doubler:
    """A model: y = 2x, rows = first axis; `runs` records the row count of every run."""

    def __init__(self, refuse_negative: bool = False, broken_output: bool = False) -> None:
        self.runs: list[int] = []
        self.refuse_negative = refuse_negative
        self.broken_output = broken_output
        self.lock = threading.Lock()

    def to_inputs(self, payload: Any) -> dict[str, Any]:
        arr = np.asarray(payload, dtype=np.float32)
        if arr.ndim == 0:
            raise PayloadError("x must be a list")
        return {"x": arr if arr.ndim == 2 else arr[np.newaxis, :]}

    def run_arrays(self, feeds: dict[str, Any]) -> dict[str, Any]:
        x = feeds["x"]
        with self.lock:
            self.runs.append(x.shape[0])
        if self.refuse_negative and (x < 0).any():
            raise PayloadError("the model rejected the inputs: negative")
        if self.broken_output:
            return {"y": x * 2, "total": np.float32(x.sum())}  # a scalar output cannot be split
        return {"y": x * 2}

    def format_outputs(self, arrays: dict[str, Any]) -> list[Any]:
        return [arrays["y"]]


def feeds(*rows: Any) -> list[dict[str, Any]]:
    return [{"x": np.asarray(r, dtype=np.float32)} for r in rows]


@pytest.mark.parametrize(
    "shapes, want",
    [
        ([(1, 4), (1, 4), (2, 4)], [[0, 1, 2]]),                 # rows may differ
        ([(1, 4), (1, 3), (1, 4), (1, 3)], [[0, 2], [1, 3]]),    # trailing shapes may not
        ([(1, 4)], [[0]]),
        ([], []),
    ],
)
def test_groups_by_trailing_shape(shapes: list[tuple[int, ...]], want: list[list[int]]) -> None:
    assert groups([{"x": np.zeros(s)} for s in shapes]) == want


def test_inputs_that_disagree_on_rows_run_alone() -> None:
    mixed = {"a": np.zeros((2, 3)), "b": np.zeros((1, 3))}
    assert rows_of(mixed) is None and rows_of({"a": np.zeros((2, 3))}) == 2
    assert rows_of({"s": np.float32(1)}) is None
    assert groups([mixed, {"a": np.zeros((1, 3)), "b": np.zeros((1, 3))}]) == [[0], [1]]
    assert groups([{"a": np.zeros((1, 3))}, {"a": np.zeros((1, 3), dtype=np.int64)}]) == [[0], [1]]  # dtype


def test_one_run_for_the_batch_and_each_request_gets_its_own_rows() -> None:
    model = Doubler()
    out = run_stacked(model, feeds([[1, 1]], [[2, 2], [3, 3]], [[4, 4]]))
    assert model.runs == [4]
    assert [o["y"].tolist() for o in out] == [[[2, 2]], [[4, 4], [6, 6]], [[8, 8]]]


def test_a_refused_batch_runs_one_by_one_so_only_the_bad_request_fails() -> None:
    model = Doubler(refuse_negative=True)
    out = run_stacked(model, feeds([[1]], [[-1]], [[3]]))
    assert model.runs == [3, 1, 1, 1]
    assert out[0]["y"].tolist() == [[2]] and out[2]["y"].tolist() == [[6]]
    assert isinstance(out[1], PayloadError)


def test_outputs_without_a_row_per_sample_fall_back_to_one_run_each(capsys: pytest.CaptureFixture[str]) -> None:
    model = Doubler(broken_output=True)
    out = run_stacked(model, feeds([[1]], [[2]]))
    assert model.runs == [2, 1, 1]
    assert [o["y"].tolist() for o in out] == [[[2]], [[4]]]
    assert "output 'total' does not have one row per sample" in capsys.readouterr().err


def test_a_model_failure_fails_every_request_of_the_run() -> None:
    class Broken(Doubler):
        def run_arrays(self, feeds: dict[str, Any]) -> dict[str, Any]:
            raise MemoryError("out of memory")

    out = run_stacked(Broken(), feeds([[1]], [[2]]))
    assert all(isinstance(o, MemoryError) for o in out)


# -- gathering a predictor class's client calls -------------------------------------------------


class Predictor:
    """A user's predictor class: one payload per call, pre/post-processing around the client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def predict(self, payload: Any) -> Any:
        if payload == "boom":
            raise ValueError("boom")
        if payload == "skip":
            return "no model needed"
        (y,) = self.client.predict([v + 1 for v in payload])  # preprocessing
        return float(y.sum())  # postprocessing


def gathered(model: Doubler, threads: int = 8) -> tuple[Gatherer, Predictor]:
    gatherer = Gatherer(model, threads)
    return gatherer, Predictor(GatheringClient(model, gatherer, model.format_outputs))


def test_predict_calls_of_a_batch_share_one_model_run() -> None:
    model = Doubler()
    gatherer, predictor = gathered(model)
    outcomes = gatherer.run_batch(predictor.predict, [[1, 2], [3, 4], [0, 0], [5, 5]])
    assert outcomes == [2 * (2 + 3), 2 * (4 + 5), 2 * (1 + 1), 2 * (6 + 6)]
    assert model.runs == [4]


def test_calls_that_fail_or_skip_the_model_do_not_hold_up_the_others() -> None:
    model = Doubler()
    gatherer, predictor = gathered(model)
    outcomes = gatherer.run_batch(predictor.predict, [[1], "boom", "skip", [2], 7])
    assert outcomes[0] == 4.0 and outcomes[2] == "no model needed" and outcomes[3] == 6.0
    assert isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[4], TypeError)  # [v + 1 for v in 7]: the user's own bug, its own outcome
    assert model.runs == [2]


def test_a_payload_error_in_the_client_is_that_request_s() -> None:
    model = Doubler()
    gatherer = Gatherer(model, 4)
    client = GatheringClient(model, gatherer, model.format_outputs)
    outcomes = gatherer.run_batch(lambda p: client.predict(p)[0].tolist(), [[1], 5, [2]])
    assert outcomes[0] == [[2]] and outcomes[2] == [[4]] and isinstance(outcomes[1], PayloadError)


def test_two_client_calls_per_payload_make_two_rounds() -> None:
    model = Doubler()
    gatherer = Gatherer(model, 4)
    client = GatheringClient(model, gatherer, model.format_outputs)

    def predict(payload: Any) -> float:
        (a,) = client.predict(payload)
        (b,) = client.predict(a[0].tolist())
        return float(b.sum())

    assert gatherer.run_batch(predict, [[1], [2], [3]]) == [4.0, 8.0, 12.0]
    assert model.runs == [3, 3]


def test_a_predictor_that_locks_around_the_client_does_not_deadlock() -> None:
    """With a lock, only one call reaches the client at a time: the gatherer stops waiting for
    the others after PATIENCE_S and runs what is waiting (slower, but every request answers)."""
    model = Doubler()
    gatherer = Gatherer(model, 4)
    client = GatheringClient(model, gatherer, model.format_outputs)
    lock = threading.Lock()

    def predict(payload: Any) -> float:
        with lock:
            (y,) = client.predict(payload)
        return float(y.sum())

    started = time.monotonic()
    assert gatherer.run_batch(predict, [[1], [2], [3]]) == [2.0, 4.0, 6.0]
    assert time.monotonic() - started < 5
    assert sum(model.runs) == 3


def test_outside_a_batch_the_client_runs_at_once() -> None:
    model = Doubler()
    gatherer, predictor = gathered(model)
    assert predictor.predict([1, 1]) == 8.0 and model.runs == [1]
    assert predictor.client.refuse_negative is False  # other attributes are the real client's


def test_batches_can_follow_each_other() -> None:
    model = Doubler()
    gatherer, predictor = gathered(model, threads=2)
    for n in (1, 5, 3):
        assert gatherer.run_batch(predictor.predict, [[i] for i in range(n)]) == [2.0 * (i + 1) for i in range(n)]
    assert sum(model.runs) == 9
    gatherer.close()


def test_batches_running_side_by_side_keep_their_own_calls() -> None:
    """A replica serving two requests at once (threads_per_process) runs two batches at a time."""
    model = Doubler()
    gatherer, predictor = gathered(model, threads=8)
    outcomes: dict[int, list[Any]] = {}

    def one(k: int) -> None:
        outcomes[k] = gatherer.run_batch(predictor.predict, [[k * 10 + i] for i in range(3)])

    threads = [threading.Thread(target=one, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert outcomes == {k: [2.0 * (k * 10 + i + 1) for i in range(3)] for k in (1, 2)}
    assert sum(model.runs) == 6

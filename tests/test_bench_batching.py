"""The bench's batching cells without running them: the projects they serve are valid
cortex.yaml, the numpy predictor answers both forms alike, and the report's table and
targets are computed from rows as bench/run.py collects them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import batching, report
from bench.models import MODELS, build_all, sample
from cortexd.config import Batching, load_config_text


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return build_all(str(tmp_path_factory.mktemp("bench-models")))


@pytest.mark.parametrize("predictor", batching.PREDICTORS)
@pytest.mark.parametrize("setting", [None, (32, "2ms")])
def test_the_projects_are_valid_cortex_yaml(built: dict[str, str], tmp_path: Path, predictor: str,
                                            setting: tuple[int, str] | None) -> None:
    folder = os.path.dirname(built["mlp"])
    (tmp_path / "numpy_predictor.py").write_text("def predict(sample, metadata):\n    return sample\n")
    text = batching.cortex_yaml("mlp", folder, predictor, setting)
    api = load_config_text(text, str(tmp_path / "cortex.yaml")).apis[0]
    assert api.name == batching.api_name("mlp", predictor, setting is not None)
    assert api.batching == (Batching(32, 0.002) if setting else None)
    assert api.compute.min_replicas == api.compute.max_replicas == 1


def test_the_unbatched_bench_models_are_not_batchable(built: dict[str, str], tmp_path: Path) -> None:
    """Why the batching cells use <model>-batch.onnx: the original ones fix their first dimension."""
    text = batching.cortex_yaml("tiny", os.path.dirname(built["tiny"]), "onnx", (8, "1ms"))
    text = text.replace("tiny-batch.onnx", "tiny.onnx")
    with pytest.raises(Exception, match="input 'input' has a fixed first dimension"):
        load_config_text(text, str(tmp_path / "cortex.yaml"))


def test_the_numpy_predictor_gives_the_same_answer_alone_and_batched(built: dict[str, str]) -> None:
    from bench import numpy_predictor

    numpy_predictor.init({"weights": os.path.join(os.path.dirname(built["mlp"]), "mlp.npz")})
    x = sample(MODELS["mlp"])
    alone = numpy_predictor.predict(x, {})
    batch = numpy_predictor.predict([x, [0.0] * len(x), x], {})
    assert len(batch) == 3 and batch[0]["label"] == batch[2]["label"] == alone["label"]
    assert np.allclose(batch[2]["output"], alone["output"], atol=1e-5)
    import onnxruntime as ort

    session = ort.InferenceSession(os.path.join(os.path.dirname(built["mlp"]), "mlp-batch.onnx"))
    out, label = session.run(None, {"input": np.asarray([x], dtype=np.float32)})
    assert np.allclose(out, alone["output"], atol=1e-4) and int(label[0]) == alone["label"]
    json.dumps(batch)  # plain JSON values


@pytest.mark.parametrize("text, want", [("32/2ms", (32, "2ms")), ("8/0.5s", (8, "0.5s"))])
def test_parse_setting(text: str, want: tuple[int, str]) -> None:
    assert batching.parse_setting(text) == want


@pytest.mark.parametrize("text", ["32", "x/2ms", "0/2ms", "32/2"])
def test_parse_setting_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        batching.parse_setting(text)


def row(model: str, predictor: str, batched: bool, c: int, rps: float, p50: float, errors: int = 0) -> dict[str, Any]:
    return {"model": model, "server": "cortexd", "replicas": 1, "tracker": False, "section": "batching",
            "predictor": predictor, "batching": "32/2ms" if batched else None, "concurrency": c, "rps": rps,
            "p50_ms": p50, "p99_ms": p50 * 3, "errors": errors, "requests": int(rps * 10), "cpu_s_per_1k": 0.5,
            "avg_batch": 12.5 if batched else None}


def test_batching_targets_and_table() -> None:
    runs = [
        {"model": "tiny", "server": "cortexd", "replicas": 1, "tracker": False, "concurrency": 8, "rps": 3000.0,
         "p50_ms": 2.0, "p99_ms": 5.0, "errors": 0, "requests": 1, "cpu_s_per_1k": 0.4},
        row("mlp", "onnx", False, 32, 1600, 18.0), row("mlp", "onnx", True, 32, 4800, 6.0),
        row("mlp", "onnx", False, 1, 1200, 0.8), row("mlp", "onnx", True, 1, 300, 2.9),
        row("tiny", "onnx", False, 1, 2400, 0.4), row("tiny", "onnx", True, 1, 350, 2.6),
        row("tiny", "onnx", False, 32, 3600, 8.0), row("tiny", "onnx", True, 32, 3500, 8.2, errors=2),
        row("mlp", "python", False, 32, 900, 30.0), row("mlp", "python", True, 32, 2700, 11.0),
    ]
    targets = {t["name"]: t for t in report.batching_targets(runs)}
    assert targets["mlp c=32 batched >= 2.5 x unbatched req/s"]["value"] == 3.0
    assert targets["mlp c=32 batched >= 2.5 x unbatched req/s"]["ok"] is True
    mlp_p50 = targets["mlp c=1 batched p50 <= unbatched p50 + batch_interval + 0.3 ms"]
    assert mlp_p50["value"] == pytest.approx(2.1) and mlp_p50["limit"] == pytest.approx(2.3) and mlp_p50["ok"]
    assert targets["tiny c=1 batched p50 <= unbatched p50 + batch_interval + 0.3 ms"]["ok"] is True
    assert targets["tiny c=32 batched not slower than unbatched"]["ok"] is False
    assert targets["no errors in the batching cells"]["value"] == 2
    # the main section's rows and targets never pick up a batching row
    assert report._find(runs, "mlp", "cortexd", 32) is None
    assert all(r["server"] != "onnx batch 32/2ms" for r in report.ratios(runs))
    text = "\n".join(report.render_batching(runs))
    assert "  mlp   onnx batch 32/2ms    32     4800    6.000   18.000      0  0.500   3.00 -12.000   12.5" in text
    assert "  mlp   py batch 32/2ms      32     2700" in text and "FAIL  tiny c=32 batched not slower" in text
    assert "server-side batching" in report.render({"runs": runs})

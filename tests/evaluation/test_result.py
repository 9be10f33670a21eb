"""The one result schema: Wilson intervals against scipy's, save/load round trip, malformed
files rejected, and the same schema from the Meta-World, LIBERO and CALVIN evaluators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

from mode_policy.errors import DataError
from mode_policy.evaluation import EvalResult, TaskResult, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (17, 50), (49, 50), (250, 500)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    # scipy uses the exact normal quantile (1.95996...), we use 1.96
    assert lo == pytest.approx(ci.low, abs=2e-4) and hi == pytest.approx(ci.high, abs=2e-4)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def _result() -> EvalResult:
    per_task = {
        "reach-v3": TaskResult(3, 4, 1.5, "reach the goal position", {"mean_steps": 61.25}),
        "push-v3": TaskResult(0, 4, 2.5, "push the puck to the goal", {"mean_steps": 500.0}),
    }
    return EvalResult(
        "metaworld",
        per_task,
        4.25,
        seed=7,
        policy="runs/a/model",
        settings={"episodes_per_task": 4},
        metrics={"avg_len": 1.5},
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    result = _result()
    path = result.save(tmp_path / "eval_info.json")
    loaded = EvalResult.load(path)
    assert loaded == result
    assert loaded.to_dict() == json.loads(path.read_text())
    data = json.loads(path.read_text())
    assert data["overall"]["successes"] == 3 and data["overall"]["episodes"] == 8
    assert data["overall"]["ci95"] == list(wilson_interval(3, 8))
    assert data["per_task"]["reach-v3"]["mean_steps"] == 61.25 and data["per_task"]["reach-v3"]["success_rate"] == 0.75


def test_malformed_files_are_rejected(tmp_path: Path) -> None:
    good = _result().to_dict()
    old_schema = {"env": "metaworld", "per_task": {"reach-v3": {"success_rate": 1.0}}}  # a pre-EvalResult file
    for data, match in [
        (old_schema, "schema version"),
        ({**good, "per_task": []}, "schema version"),
        ({**good, "per_task": {"reach-v3": {"successes": 1}}}, "needs integer 'successes' and 'episodes'"),
        ({**good, "per_task": {"reach-v3": {"successes": 5, "episodes": 4}}}, r"must be in \[0, episodes=4\]"),
    ]:
        with pytest.raises(DataError, match=match):
            EvalResult.from_dict(data)
    broken = tmp_path / "eval_info.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        EvalResult.load(broken)


def _schema(result: EvalResult) -> tuple[set[str], set[str], set[str]]:
    data = result.to_dict()
    tasks = [set(t) for t in data["per_task"].values()]
    return set(data), set.intersection(*tasks), set(data["overall"])


def test_every_evaluator_writes_the_same_schema(metaworld_result, libero_result, calvin_result, tmp_path) -> None:
    results = {"metaworld": metaworld_result, "libero": libero_result[0], "calvin": calvin_result[0]}
    schemas = {env: _schema(r) for env, r in results.items()}
    top, per_task, overall = schemas["metaworld"]
    for env, (t, p, o) in schemas.items():
        assert t == top and o == overall, env
        assert {"successes", "episodes", "success_rate", "ci95", "wall_s", "instruction"} <= p, env
    for env, result in results.items():
        assert result.env == env
        assert EvalResult.load(result.save(tmp_path / f"{env}.json")) == result
        assert result.overall.episodes == sum(r.episodes for r in result.per_task.values())
        assert result.format_table().splitlines()[-1 - len(result.metrics)].startswith("overall")


def test_saved_result_keeps_the_evaluation_order_and_formats_metric_lists(tmp_path):
    from mode_policy.evaluation.result import EvalResult, TaskResult

    result = EvalResult(
        "calvin",
        {"zeta": TaskResult(1, 2), "alpha": TaskResult(2, 2)},
        metrics={"avg_len": 1.23456, "chain_success": [0.5, 0.25]},
    )
    loaded = EvalResult.load(result.save(tmp_path / "eval_info.json"))
    assert list(loaded.per_task) == ["zeta", "alpha"]
    table = loaded.format_table()
    assert "avg_len: 1.235" in table and "chain_success: [0.500, 0.250]" in table

"""CI-sized load run (16 clients × 100 mixed requests; ``python -m tests.proof.load`` runs 64 × 1000)."""

from __future__ import annotations

from pathlib import Path

from tests.proof.load import percentile, run_load


def test_sixteen_clients_mixed_requests_no_deadlock_no_unexpected_error(tmp_path: Path) -> None:
    result = run_load(16, 100, seed=7, stall=60.0, root=tmp_path)
    print(result.table())  # p50/p99 for the log (-s); nothing below asserts a speed
    assert result.failures == []
    assert result.completed == 16 * 100
    assert result.expected_errors == len(result.latencies["bad_sign"]) > 0
    assert result.reuses == 0
    assert result.peer_verified == len(result.handed) == len(result.latencies["encrypt"]) > 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0

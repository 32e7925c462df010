"""benchmarks/activation_memory.py: a tiny run end to end, in child processes."""

import csv
import importlib.util

from tests.conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "activation_memory", f"{REPO_ROOT}/benchmarks/activation_memory.py"
)
activation_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(activation_memory)


def test_a_tiny_run_counts_bytes_and_reports_failures_as_rows(tmp_path):
    activation_memory.main(
        ["--models", "HyenaRec", "NoSuchModel", "--lengths", "32", "--batch", "4"]
        + ["--n-items", "30", "--hidden", "16", "--out", str(tmp_path), "--tag", "smoke"]
    )
    with open(tmp_path / "activation_memory_smoke.csv") as file:
        rows = list(csv.DictReader(line for line in file if not line.startswith("#")))
    measured = {row["dtype"]: row for row in rows if row["model"] == "HyenaRec"}
    assert set(measured) == {"fp32", "bf16"}
    per_token = {dtype: int(row["saved_bytes_per_token"]) for dtype, row in measured.items()}
    # at least one float32 [hidden] vector per token, and bf16 keeps less than float32
    assert per_token["fp32"] > 16 * 4
    assert per_token["bf16"] < per_token["fp32"]
    failed = [row for row in rows if row["model"] == "NoSuchModel"]
    assert len(failed) == 2 and all("NoSuchModel" in row["note"] for row in failed)
    assert (tmp_path / "activation_memory_smoke.png").stat().st_size > 0

"""benchmarks/speed.py: a tiny run end to end, failures as rows, the FLOP counts it adds."""

import csv
import importlib.util
import json
import math
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch
from recbole.data.interaction import Interaction
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import REPO_ROOT, build_model

_spec = importlib.util.spec_from_file_location("speed", f"{REPO_ROOT}/benchmarks/speed.py")
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)


def read_rows(path):
    with open(path) as file:
        return list(csv.DictReader(line for line in file if not line.startswith("#")))


def test_a_tiny_run_writes_csv_markdown_and_plot(tmp_path):
    rows = speed.main(
        ["--models", "HyenaRec", "--lengths", "16", "--batch", "2", "--n-items", "30"]
        + ["--repeats", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]
        + ["--out", str(tmp_path), "--tag", "smoke", "--timeout", "240"]
    )
    assert [row["status"] for row in rows] == ["ok"], rows
    written = read_rows(tmp_path / "speed_smoke.csv")
    assert len(written) == 1
    row = written[0]
    assert (row["model"], row["dtype"], row["seq_len"]) == ("HyenaRec", "fp32", "16")
    for key in ("train_ms", "infer_ms", "train_tokens_per_s", "train_peak_mb", "params"):
        assert float(row[key]) > 0, key
    assert float(row["fwd_flops_per_token"]) > 0
    header = (tmp_path / "speed_smoke.csv").read_text()
    assert "# torch: " in header and "# settings: batch 2" in header
    assert "| 16 | " in (tmp_path / "speed_smoke.md").read_text()
    assert (tmp_path / "speed_smoke.png").stat().st_size > 0


def test_rounds_keep_the_median_round_of_each_cell_and_every_round_s_time():
    def row(model, seq_len, status="ok", train_ms=None, peak=None):
        return {
            "model": model,
            "dtype": "fp32",
            "seq_len": seq_len,
            "status": status,
            "train_ms": train_ms,
            "train_peak_mb": peak,
        }

    rounds = [
        [row("A", 8, train_ms=30.0, peak=1), row("B", 8, "oom")],
        [row("A", 8, train_ms=10.0, peak=2), row("B", 8, "skipped")],
        [row("A", 8, train_ms=20.0, peak=3), row("B", 8, "skipped")],
        [row("A", 8, "error"), row("B", 8, "skipped")],
    ]
    first, second = speed.combine_rounds(rounds)
    # the median round's row whole (its peak too), the failed round left out of the count
    assert (first["train_ms"], first["train_peak_mb"], first["rounds"]) == (20.0, 3, 3)
    assert first["train_ms_rounds"] == "30.0/10.0/20.0"
    assert second["status"] == "oom"  # a cell that never ran keeps its first row
    two = speed.combine_rounds(rounds[:2])[0]
    assert two["train_ms"] == 10.0  # an even count keeps the lower median


def test_rounds_below_one_are_refused(capsys):
    with pytest.raises(SystemExit):
        speed.parse_args(["--rounds", "0"])
    assert "--rounds must be >= 1, got 0" in capsys.readouterr().err


def test_a_grid_runs_once_per_round(tmp_path):
    rows = speed.main(
        ["--models", "HyenaRec", "--lengths", "16", "--batch", "2", "--n-items", "30"]
        + ["--repeats", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]
        + ["--out", str(tmp_path), "--tag", "rounds", "--timeout", "240", "--rounds", "2"]
    )
    assert len(rows) == 1 and rows[0]["rounds"] == 2
    assert len(rows[0]["train_ms_rounds"].split("/")) == 2
    written = read_rows(tmp_path / "speed_rounds.csv")
    assert written[0]["rounds"] == "2"
    assert "# rounds: 2 rounds" in (tmp_path / "speed_rounds.csv").read_text()


def test_all_position_loss_trains_every_position_and_skips_models_without_it(tmp_path):
    model = build_model("HyenaRec", 30)
    batch = speed.synthetic_batch(model, 2, 8, 30, torch.Generator(), all_positions=True)
    targets = batch["target_" + model.ITEM_SEQ]
    assert targets.shape == (2, 8) and (targets > 0).all()
    rows = speed.main(
        ["--models", "HyenaRec", "SASRec", "--lengths", "16", "--batch", "2", "--n-items", "30"]
        + ["--repeats", "1", "--warmup", "0", "--device", "cpu", "--threads", "1"]
        + ["--out", str(tmp_path), "--tag", "all", "--timeout", "240", "--loss", "all-positions"]
    )
    # RecBole's own SASRec has no all-position training (the plugin's FlashSASRec has)
    assert [row["status"] for row in rows] == ["ok", "skipped"], rows
    assert "no all-position training" in rows[1]["note"]
    assert "CE at every position" in (tmp_path / "speed_all.csv").read_text()


@pytest.mark.slow
def test_compile_runs_every_model_compiled_and_says_so(tmp_path):
    rows = speed.main(
        ["--models", "HyenaRec", "FlashSASRec", "--lengths", "16", "--batch", "2"]
        + ["--n-items", "30", "--repeats", "1", "--warmup", "1", "--device", "cpu"]
        + ["--threads", "1", "--out", str(tmp_path), "--tag", "compiled", "--compile"]
    )
    assert [row["status"] for row in rows] == ["ok", "ok"], rows
    header = (tmp_path / "speed_compiled.csv").read_text()
    assert "# torch_compile: calculate_loss and full_sort_predict of every model" in header


def test_keep_freed_memory_reaches_the_children_and_the_header(tmp_path, monkeypatch):
    """The allocator setting goes into every child's environment, and the CSV says which."""
    environments = []

    def fake_run(command, **kwargs):
        if "env" not in kwargs:  # describe_machine's git call
            return subprocess.CompletedProcess(command, 0, stdout="abc1234\n", stderr="")
        environments.append(kwargs["env"])
        result = {"status": "ok", "train_ms": 1.0}
        return subprocess.CompletedProcess(
            command, 0, stdout=speed.RESULT_PREFIX + json.dumps(result) + "\n", stderr=""
        )

    monkeypatch.setattr(speed.subprocess, "run", fake_run)
    for flag, tag in (["--keep-freed-memory"], "keep"), ([], "default"):
        speed.main(
            ["--models", "HyenaRec", "--lengths", "16", "--device", "cpu", "--out", str(tmp_path)]
            + ["--tag", tag, *flag]
        )
    keep, default = environments
    assert keep["GLIBC_TUNABLES"] == speed.GLIBC_KEEP_FREED
    assert default.get("GLIBC_TUNABLES") == os.environ.get("GLIBC_TUNABLES")
    assert "# cpu_allocator: glibc keeps freed memory" in (tmp_path / "speed_keep.csv").read_text()
    assert "# cpu_allocator: glibc's defaults" in (tmp_path / "speed_default.csv").read_text()


def test_time_outs_are_rows_and_larger_lengths_are_skipped(tmp_path):
    rows = speed.main(
        ["--models", "GRU4Rec", "--lengths", "16", "32", "--device", "cpu"]
        + ["--timeout", "0.01", "--out", str(tmp_path), "--tag", "timeout"]
    )
    assert [(row["seq_len"], row["status"]) for row in rows] == [(16, "timeout"), (32, "skipped")]
    assert rows[1]["note"] == "timeout at L=16"
    assert len(read_rows(tmp_path / "speed_timeout.csv")) == 2


def test_fft_flops_follow_the_n_log_n_formula():
    real_forward = speed._fft_flops("input", 2.5)
    assert real_forward([3, 5, 200], [2], out_shape=[3, 5, 101]) == int(
        15 * 2.5 * 200 * math.log2(200)
    )
    real_inverse = speed._fft_flops("output", 2.5)
    assert real_inverse([3, 5, 101], [2], out_shape=[3, 5, 200]) == int(
        15 * 2.5 * 200 * math.log2(200)
    )


def _batch(model, seq_len):
    return Interaction(
        {
            model.ITEM_SEQ: torch.randint(1, model.n_items, (1, seq_len)),
            model.ITEM_SEQ_LEN: torch.tensor([seq_len]),
            model.POS_ITEM_ID: torch.tensor([1]),
        }
    )


def _flops(model, seq_len):
    return speed._count_forward_flops(model, _batch(model, seq_len), "cpu", None)


def _encoder_flops(encode, model, seq_len):
    """FLOPs of ``encode(item_seq, item_seq_len)``, counted as the benchmark counts a loss."""
    batch = _batch(model, seq_len)
    loss = SimpleNamespace(
        calculate_loss=lambda b: encode(b[model.ITEM_SEQ], b[model.ITEM_SEQ_LEN])
    )
    return speed._count_forward_flops(loss, batch, "cpu", None)


@pytest.mark.parametrize("seq_len", [8, 20])
def test_fused_attention_is_counted_like_recbole_attention(seq_len):
    flash = build_model("FlashSASRec", 30, MAX_ITEM_LIST_LENGTH=20)
    stock = speed._build_model(
        {
            "model": "SASRec",
            "seq_len": 20,
            "device": "cpu",
            "hidden": 64,
            "layers": 2,
            "heads": 2,
            "n_items": 30,
            "overrides": {},
            "seed": 0,
        }
    ).eval()
    # every layer at every position: RecBole's forward computes them all before its gather
    fused = _encoder_flops(flash.forward_sequence, flash, seq_len)
    assert fused == _encoder_flops(stock.forward, stock, seq_len)
    # the prefix loss: FlashSASRec runs its last layer at the last position only
    assert _flops(flash, seq_len) < _flops(stock, seq_len)


def test_hyenarec_flops_include_its_ffts():
    model = build_model("HyenaRec", 30)
    torch.manual_seed(0)
    with_ffts = _flops(model, 20)
    torch.manual_seed(0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.calculate_loss(_batch(model, 20))
    assert with_ffts > counter.get_total_flops() > 0


def test_a_model_label_carries_its_own_settings():
    assert speed.parse_model_label("HyenaRec") == ("HyenaRec", {})
    assert speed.parse_model_label("HyenaRec[gradient_checkpointing=True,block_chunk_size=8]") == (
        "HyenaRec",
        {"gradient_checkpointing": True, "block_chunk_size": 8},
    )
    with pytest.raises(ValueError, match="key=value"):
        speed.parse_model_label("HyenaRec[gradient_checkpointing]")
    with pytest.raises(ValueError, match="brackets"):
        speed.parse_model_label("HyenaRec[a=1")

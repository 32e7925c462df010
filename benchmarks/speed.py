"""Speed and memory of sequential recommenders against sequence length.

For every (model, length L, dtype) this script starts a fresh Python process that builds the model
from a real RecBole-style ``Config`` (the model's property files plus the settings below, and a
dataset stub, so no data files are needed) and measures:

- the training step: forward + backward + AdamW on a batch of full-length sequences, cross-entropy
  at the last position over all items (``calculate_loss`` without per-position targets), or with
  ``--loss all-positions`` at every position (the plugin's ``train_mode: autoregressive``, the
  paper's protocol; models without it are reported as skipped);
- full-ranking inference: ``full_sort_predict`` on the same batch, under ``torch.no_grad``;
- tokens per second (batch x L / time) for both;
- peak memory per phase: on CPU the child's peak resident set size (VmHWM, reset before each
  phase; the ~0.5 GB of Python + PyTorch included), on CUDA ``torch.cuda.max_memory_allocated``;
- parameter count and forward FLOPs per token, counted by ``torch.utils.flop_counter`` on a batch
  of one at the same L, with the FFTs (2.5 N log2 N per real FFT of size N, 5 N log2 N per complex
  one) and PyTorch's CPU fused attention added, both of which it does not count. Attention is
  counted as dense L x L (causal kernels skip about half of it); element-wise work is not counted.

A model may carry its own config values in brackets, ``HyenaRec[gradient_checkpointing=True]``;
the whole label names its rows.

Out-of-memory errors, crashes and time-outs become rows with their status; once a (model, dtype)
fails at some L the larger lengths are reported as skipped. ``SASRec`` and ``GRU4Rec`` name
RecBole's own classes; any other name is looked up with ``recbole_hyena.utils.get_model``.

Outputs, under ``--out``: ``speed_<tag>.csv`` (settings as ``#`` lines on top), ``speed_<tag>.md``
and ``speed_<tag>.png`` (log-log time and memory against L).

``--compile`` wraps every model's ``calculate_loss`` and ``full_sort_predict`` in
``torch.compile`` (the same for all models, so compiled rows compare like with like); the warm-up
steps absorb the compilation. ``--fused-layer-norm`` swaps every model's ``nn.LayerNorm`` for the
plugin's ``recbole_hyena.model.fused_norm.LayerNorm`` (a Triton kernel on CUDA; the plugin's
own models use it already), so that zoo models can be timed with the same LayerNorm kernel.

``--keep-freed-memory`` (CPU) runs every child with glibc keeping freed memory for reuse. Under
glibc's defaults every tensor above its mmap threshold is mapped afresh and zero-filled by the
kernel page by page: RecBole's SASRec spends most of a CPU training step there at L=1000 (18.5 of
its 30.5 CPU seconds), while the plugin's models chunk their work to stay below the threshold.
With the flag the times compare the models' compute rather than the allocator.

Example (CPU, the issue's settings)::

    python benchmarks/speed.py --models HyenaRec FlashSASRec SASRec GRU4Rec \\
        --lengths 50 200 1000 2000 --timeout 300 --repeats 2
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# --keep-freed-memory: glibc serves large tensors from its heap and keeps freed memory for reuse,
# instead of mapping each tensor above its mmap threshold (at most 32 MB) afresh, which the kernel
# zero-fills page by page on first touch.
GLIBC_KEEP_FREED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
DEFAULT_MODELS = ["HyenaRec", "FlashSASRec", "SASRec", "GRU4Rec"]
DEFAULT_LENGTHS = [50, 200, 1000, 2000, 4000, 8000]
GPU_EXTRA_LENGTHS = [16000]
# The names that mean RecBole's stock classes, not the plugin's adapters of them.
STOCK_MODELS = {
    "SASRec": "recbole.model.sequential_recommender.sasrec",
    "GRU4Rec": "recbole.model.sequential_recommender.gru4rec",
}
COLUMNS = [
    "model",
    "dtype",
    "seq_len",
    "batch",
    "status",
    "note",
    "train_ms",
    "train_ms_min",
    "infer_ms",
    "infer_ms_min",
    "train_tokens_per_s",
    "infer_tokens_per_s",
    "train_peak_mb",
    "infer_peak_mb",
    "base_mb",
    "params",
    "fwd_flops_per_token",
    "repeats",
    "rounds",
    "train_ms_rounds",
    "matmul_gflops",
    "wall_s",
    "load_before",
    "load_after",
]
INTEGER_COLUMNS = {
    "seq_len",
    "batch",
    "train_tokens_per_s",
    "infer_tokens_per_s",
    "params",
    "fwd_flops_per_token",
    "repeats",
}
RESULT_PREFIX = "RESULT "


# ---------------------------------------------------------------------------------------------
# Child process: one (model, L, dtype)
# ---------------------------------------------------------------------------------------------


class DatasetStub:
    """What a sequential model's constructor asks of a RecBole dataset."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


def _fft_flops(signal: str, flops_per_point_log: float):
    """Flop formula for an ``aten._fft_*`` op: ``flops_per_point_log * N log2 N`` per transform
    of size N over the op's ``dim``; ``signal`` says whether the input or the output (c2r) is
    the (real) signal whose size counts."""

    def formula(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
        shape = out_shape if signal == "output" else input_shape
        size = math.prod(shape[d] for d in dim)
        transforms = math.prod(shape) // max(size, 1)
        return int(transforms * flops_per_point_log * size * math.log2(max(size, 2)))

    return formula


def _count_forward_flops(model, batch, device_type: str, dtype) -> int:
    """Forward FLOPs of ``calculate_loss`` on ``batch`` (matmuls, convolutions, attention, FFTs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    aten = torch.ops.aten

    def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    custom = {
        aten._fft_r2c: _fft_flops("input", 2.5),  # real FFT: about half a complex one
        aten._fft_c2r: _fft_flops("output", 2.5),
        aten._fft_c2c: _fft_flops("input", 5.0),
    }
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa_flops
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter, torch.no_grad(), _autocast(device_type, dtype):
        model.calculate_loss(batch)
    return counter.get_total_flops()


def _autocast(device_type: str, dtype):
    import torch

    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def parse_model_label(label: str) -> tuple[str, dict]:
    """``"HyenaRec[gradient_checkpointing=True,block_chunk_size=8]"`` -> the model name and
    its own config values (YAML values), so that one run can compare settings of one model."""
    import yaml

    name, bracket, rest = label.partition("[")
    if not bracket:
        return label, {}
    if not rest.endswith("]"):
        raise ValueError(
            f"model [{label}]: settings go in brackets, e.g. Name[key=value,key=value]"
        )
    overrides = {}
    for item in filter(None, rest[:-1].split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"model [{label}]: [{item}] is not key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def synthetic_batch(
    model, size: int, seq_len: int, n_items: int, generator, all_positions: bool = False
):
    """A batch of ``size`` full-length random sequences over ``n_items`` items with a random
    next item each: what ``calculate_loss`` (CE at the last position) and the ranking take; with
    ``all_positions`` also a random target at every position (all-position CE)."""
    import torch
    from recbole.data.interaction import Interaction

    from recbole_hyena.model.abstract_recommender import TARGET_PREFIX

    fields = {
        model.ITEM_SEQ: torch.randint(1, n_items, (size, seq_len), generator=generator),
        model.ITEM_SEQ_LEN: torch.full((size,), seq_len, dtype=torch.long),
        model.POS_ITEM_ID: torch.randint(1, n_items, (size,), generator=generator),
    }
    if all_positions:
        targets = torch.randint(1, n_items, (size, seq_len), generator=generator)
        fields[TARGET_PREFIX + model.ITEM_SEQ] = targets
    return Interaction(fields)


def _build_model(spec: dict):
    import importlib

    import torch

    from recbole_hyena.config import Config
    from recbole_hyena.utils import get_model

    name, own_overrides = parse_model_label(spec["model"])
    config_dict = {
        "use_gpu": spec["device"] == "cuda",
        "MAX_ITEM_LIST_LENGTH": spec["seq_len"],
        "hidden_size": spec["hidden"],
        "embedding_size": spec["hidden"],  # GRU4Rec's item embedding size
        "n_layers": spec["layers"],
        "num_layers": spec["layers"],  # GRU4Rec's key for its number of GRU layers
        "n_heads": spec["heads"],
        "loss_type": "CE",
        "train_neg_sample_args": None,
        **spec["overrides"],
        **own_overrides,
    }
    config = Config(model=name, dataset="ml-100k", config_dict=config_dict)
    if name in STOCK_MODELS:
        model_class = getattr(importlib.import_module(STOCK_MODELS[name]), name)
    else:
        model_class = get_model(name)
    torch.manual_seed(spec["seed"])
    return model_class(config, DatasetStub(spec["n_items"]))


def _peak_rss_kib() -> int:
    """This process's peak resident set size since the last reset (VmHWM), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, never reset


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _is_oom(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, MemoryError) or any(
        text in message for text in ("out of memory", "can't allocate memory", "not enough memory")
    )


def _median_and_min(times: list[float]) -> tuple[float, float]:
    return statistics.median(times) * 1e3, min(times) * 1e3


def run_child(spec: dict) -> None:
    """Measure one (model, L, dtype) and print ``RESULT {json}`` lines as results come in, so
    that a parent that kills this process on time-out still gets the phases that finished."""
    import resource

    if spec["device"] == "cpu" and spec["max_memory_gb"] > 0:
        limit = int(spec["max_memory_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import torch

    from recbole_hyena.model.abstract_recommender import AllPositionMixin

    result: dict = {"status": "error", "note": ""}

    def report(**fields) -> None:
        result.update(fields)
        print(RESULT_PREFIX + json.dumps(result), flush=True)

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec["dtype"]]
    on_gpu = device.type == "cuda"

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    def peak_mb() -> float:
        if on_gpu:
            return torch.cuda.max_memory_allocated() / 2**20
        return _peak_rss_kib() / 2**10

    def reset_peak() -> None:
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()

    try:
        model = _build_model(spec).to(device)
    except Exception as error:  # a model that cannot be built is a row too
        report(status="error", note=f"build: {type(error).__name__}: {error}"[:300])
        return
    # Importing RecBole's sequential models switches autograd anomaly detection on for the whole
    # process (recbole/model/sequential_recommender/sine.py calls set_detect_anomaly(True)); it
    # checks every gradient for NaN and records a traceback per op, which would make up a large
    # part of the training times measured here.
    torch.autograd.set_detect_anomaly(False)
    report(params=sum(p.numel() for p in model.parameters()), base_mb=round(peak_mb(), 1))

    batch_size, seq_len, n_items = spec["batch"], spec["seq_len"], spec["n_items"]
    generator = torch.Generator().manual_seed(spec["seed"])

    all_positions = spec.get("loss") == "all-positions"
    if all_positions and not isinstance(model, AllPositionMixin):
        report(status="skipped", note="no all-position training (train_mode: autoregressive)")
        return

    def make_batch(size: int):
        return synthetic_batch(model, size, seq_len, n_items, generator, all_positions).to(device)

    try:
        model.eval()
        flops = _count_forward_flops(model, make_batch(1), device.type, dtype)
        report(fwd_flops_per_token=round(flops / seq_len))
    except Exception as error:
        result["note"] = f"flop count failed: {type(error).__name__}"

    if spec.get("fused_layer_norm"):
        from recbole_hyena.model.fused_norm import replace_layer_norms

        report(layer_norms_swapped=replace_layer_norms(model))
    if spec.get("compile"):
        # The same treatment for every model: its loss and its full ranking, whole-graph where
        # it can be (graph breaks fall back to eager pieces, which the times then include).
        model.calculate_loss = torch.compile(model.calculate_loss)
        model.full_sort_predict = torch.compile(model.full_sort_predict)
    batch = make_batch(batch_size)
    tokens = batch_size * seq_len
    report(matmul_gflops=round(_matmul_gflops(device, sync), 1))

    # Training step: forward + backward + AdamW.
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device.type, dtype):
            loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()

    def measure(phase: str, step) -> dict:
        """Median and minimum time, tokens per second and peak memory of ``step``."""
        reset_peak()
        times = _timed(step, sync, spec["warmup"], spec["repeats"])
        median_ms, min_ms = _median_and_min(times)
        return {
            f"{phase}_ms": round(median_ms, 2),
            f"{phase}_ms_min": round(min_ms, 2),
            f"{phase}_tokens_per_s": round(tokens / (median_ms / 1e3)),
            f"{phase}_peak_mb": round(peak_mb(), 1),
        }

    status = "ok"
    try:
        report(status="ok", **measure("train", train_step))
    except Exception as error:
        status = "oom" if _is_oom(error) else "error"
        report(status=status, note=f"train: {type(error).__name__}: {error}"[:300])
    if spec.get("profile_to") and status == "ok":
        try:
            _profile_step(train_step, sync, on_gpu, Path(spec["profile_to"]), spec)
        except Exception as error:  # a profile is a bonus; never lose the row for it
            result["note"] = f"profile failed: {type(error).__name__}"
    optimizer.zero_grad(set_to_none=True)  # free the gradients before inference

    # Full-ranking inference: scores of every item for every sequence of the batch.
    model.eval()

    def infer_step() -> None:
        with torch.no_grad(), _autocast(device.type, dtype):
            model.full_sort_predict(batch)

    try:
        report(status=status, **measure("infer", infer_step))
    except Exception as error:
        infer_status = "oom" if _is_oom(error) else "error"
        note = (result["note"] + "; " if result["note"] else "") + f"infer: {type(error).__name__}"
        report(status=status if status != "ok" else infer_status, note=note[:300])


def _matmul_gflops(device, sync) -> float:
    """Rate of a fixed fp32 matrix product right now: on a shared CPU it shows how much of the
    machine this run got, so rows measured under different load can be told apart."""
    import torch

    size, repeats = 512, 5
    left, right = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(left, right)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(left, right)
    sync()
    return repeats * 2 * size**3 / (time.perf_counter() - start) / 1e9


def _profile_step(step, sync, on_gpu: bool, out: Path, spec: dict) -> None:
    """One training step under ``torch.profiler``: the ops by self time, written to a file."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        step()
        sync()
    sort_by = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    table = profiler.key_averages(group_by_input_shape=True).table(sort_by=sort_by, row_limit=30)
    name = f"profile_{spec['model']}_L{spec['seq_len']}_{spec['dtype']}.txt"
    title = (
        f"{spec['model']}, L={spec['seq_len']}, {spec['dtype']}, batch {spec['batch']}, "
        f"{spec['device']}, torch {torch.__version__}: one training step, sorted by {sort_by}"
    )
    (out / name).write_text(title + "\n\n" + table + "\n")


def _timed(step, sync, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------
# Parent: the grid, subprocesses, outputs
# ---------------------------------------------------------------------------------------------


def checkout_env() -> dict[str, str]:
    """A child process's environment with this checkout first on ``PYTHONPATH``: the code
    measured is the code beside this script, not a copy installed elsewhere (an editable install
    of another checkout would otherwise win, and the recorded ``git_commit`` would be wrong)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_one(spec: dict, timeout: float, cut_by_budget: bool = False) -> dict:
    """One child process; its last ``RESULT`` line, or a row saying why there is none."""
    row = {"status": "error", "note": ""}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    env = checkout_env()
    if spec.get("keep_freed_memory"):
        env["GLIBC_TUNABLES"] = GLIBC_KEEP_FREED
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with tempfile.TemporaryDirectory() as workdir:  # RecBole may write log folders
        try:
            done = subprocess.run(
                command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
            )
            stdout, stderr, returncode = done.stdout, done.stderr, done.returncode
            timed_out = False
        except subprocess.TimeoutExpired as expired:
            stdout = _text(expired.stdout)
            stderr, returncode, timed_out = _text(expired.stderr), None, True
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if lines:
        row.update(json.loads(lines[-1][len(RESULT_PREFIX) :]))
    if timed_out:
        finished = "train done, " if row.get("train_ms") else ""
        reason = " (end of the --budget)" if cut_by_budget else ""
        row.update(status="timeout", note=f"{finished}killed after {timeout:.0f} s{reason}")
    elif returncode != 0:
        killed = returncode is not None and returncode < 0
        row["status"] = "oom" if killed and -returncode == 9 else "error"
        tail = stderr.strip().splitlines()[-1:] or [""]
        row["note"] = (
            f"exit {returncode}"
            + (" (SIGKILL: likely out of memory)" if killed else "")
            + f": {tail[0]}"
        )[:300]
    row.update(
        model=spec["model"],
        dtype=spec["dtype"],
        seq_len=spec["seq_len"],
        batch=spec["batch"],
        wall_s=round(time.perf_counter() - start, 1),
        load_before=round(load_before, 2),
        load_after=round(os.getloadavg()[0], 2),
    )
    return row


def _text(output) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output


def describe_machine(device: str) -> dict:
    import recbole
    import torch

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32  # PyTorch's default: off
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_rows(path: Path) -> list[dict]:
    """Rows of an earlier CSV of this script, numbers parsed back."""
    with path.open() as file:
        rows = list(csv.DictReader(line for line in file if not line.startswith("#")))
    for row in rows:
        for key, value in row.items():
            if key in ("model", "dtype", "status", "note") or value in (None, ""):
                continue
            row[key] = int(float(value)) if key in INTEGER_COLUMNS else float(value)
    return rows


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per (model, dtype, L) from the rows of several rounds of the same grid: the
    round with the median train time among those that ran (the lower one of an even count),
    so that every field of the kept row comes from one run, with ``rounds`` (how many rounds
    measured the cell) and ``train_ms_rounds`` (each round's train time, in round order); a
    cell that never ran keeps its first round's row."""
    cells: dict[tuple, list[dict]] = {}
    for rows in rounds:
        for row in rows:
            cells.setdefault((row["model"], row["dtype"], row["seq_len"]), []).append(row)
    combined = []
    for runs in cells.values():
        timed = [
            row
            for row in runs
            if row.get("status") == "ok" and row.get("train_ms") not in (None, "")
        ]
        if not timed:
            combined.append(runs[0])
            continue
        by_time = sorted(timed, key=lambda row: float(row["train_ms"]))
        row = dict(by_time[(len(by_time) - 1) // 2])
        row["rounds"] = len(timed)
        row["train_ms_rounds"] = "/".join(f"{float(run['train_ms']):.1f}" for run in timed)
        combined.append(row)
    return combined


def merge_rows(kept: list[dict], new: list[dict]) -> list[dict]:
    """``kept`` rows not measured again, then ``new``, ordered by dtype, model and L."""
    measured = {(row["model"], row["dtype"], row["seq_len"]) for row in new}
    rows = [row for row in kept if (row["model"], row["dtype"], row["seq_len"]) not in measured]
    rows += new
    order = list(dict.fromkeys((row["dtype"], row["model"]) for row in rows))
    return sorted(rows, key=lambda row: (order.index((row["dtype"], row["model"])), row["seq_len"]))


def write_csv(path: Path, rows: list[dict], header: dict) -> None:
    with path.open("w", newline="") as file:
        for key, value in header.items():
            file.write(f"# {key}: {value}\n")
        writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value, digits: int = 0) -> str:
    if value in (None, ""):
        return "–"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _memory(row: dict, on_gpu: bool) -> str:
    value = row.get("train_peak_mb")
    if value in (None, ""):
        return ""
    return f"{value / 1024:.2f} GiB" if on_gpu else f"{value / 1024:.2f} GiB RSS"


def write_markdown(path: Path, rows: list[dict], header: dict, on_gpu: bool) -> None:
    lines = [f"# Speed benchmark ({header['device']})", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "## Training step (ms) and its peak memory", ""]
    labels = list(dict.fromkeys((row["model"], row["dtype"]) for row in rows))
    lengths = sorted({row["seq_len"] for row in rows})
    lines.append("| L | " + " | ".join(f"{model} {dtype}" for model, dtype in labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    by_key = {(row["model"], row["dtype"], row["seq_len"]): row for row in rows}
    for seq_len in lengths:
        cells = []
        for model, dtype in labels:
            row = by_key.get((model, dtype, seq_len))
            if row is None:
                cells.append("")
            elif row.get("train_ms") not in (None, ""):
                cells.append(f"{_fmt(row['train_ms'])} ms, {_memory(row, on_gpu)}")
            else:
                cells.append(row["status"])
        lines.append(f"| {seq_len} | " + " | ".join(cells) + " |")
    lines += ["", "## All measurements", ""]
    columns = [
        ("model", "model"),
        ("dtype", "dtype"),
        ("seq_len", "L"),
        ("status", "status"),
        ("train_ms", "train ms (median)"),
        ("train_ms_min", "train ms (min)"),
        ("infer_ms", "full-rank ms/batch"),
        ("train_tokens_per_s", "train tokens/s"),
        ("infer_tokens_per_s", "infer tokens/s"),
        ("train_peak_mb", "train peak MiB"),
        ("infer_peak_mb", "infer peak MiB"),
        ("params", "params"),
        ("fwd_flops_per_token", "fwd MFLOPs/token"),
        ("note", "note"),
    ]
    lines.append("| " + " | ".join(title for _, title in columns) + " |")
    lines.append("|---" * len(columns) + "|")
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key == "fwd_flops_per_token" and value not in (None, ""):
                value = f"{value / 1e6:,.2f}"
            cells.append(_fmt(value) if key != "note" else str(value or ""))
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, rows: list[dict], header: dict, on_gpu: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train_ms", "training step (ms)"),
        ("infer_ms", "full-ranking inference per batch (ms)"),
        ("train_peak_mb", "peak memory, training (MiB" + (")" if on_gpu else ", process RSS)")),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(16, 5.2))
    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    labels = list(dict.fromkeys((row["model"], row["dtype"]) for row in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = list(dict.fromkeys(row["model"] for row in rows))
    for axis, (key, title) in zip(axes, panels):
        for model, dtype in labels:
            points = [
                (row["seq_len"], row[key])
                for row in rows
                if row["model"] == model
                and row["dtype"] == dtype
                and row.get(key) not in (None, "")
            ]
            failed = [
                row
                for row in rows
                if row["model"] == model and row["dtype"] == dtype and row["status"] not in ("ok",)
            ]
            label = f"{model} {dtype}"
            if failed:
                label += f" ({failed[0]['status']} at L={failed[0]['seq_len']})"
            color = colors[models.index(model) % len(colors)]
            # An empty series still puts a model that never finished into the legend.
            xs, ys = zip(*sorted(points)) if points else ((), ())
            axis.plot(xs, ys, styles.get(dtype, "-"), marker="o", color=color, label=label)
        if any(row.get(key) not in (None, "") for row in rows):
            axis.set_xscale("log")
            axis.set_yscale("log")
        else:
            axis.text(0.5, 0.5, "no finished runs", ha="center", transform=axis.transAxes)
        axis.set_xlabel("sequence length L")
        axis.set_title(title, fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    device = header.get("gpu") or header.get("cpu")
    title = f"{device}; torch {header['torch']}, RecBole {header['recbole']}; {header['settings']}"
    if header.get("note"):
        title += f"\n{header['note']}"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument(
        "--lengths", nargs="+", type=int, help="default: 50 200 1000 2000 4000 8000 (+16000 on GPU)"
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--n-items", type=int, default=3417, help="catalogue size (ML-1M: 3,417)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--dtypes", nargs="+", help="fp32 bf16 fp16 (default: fp32, +bf16 on GPU)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per phase")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps per phase (on CPU a fresh process's second step is still slow: "
        "HyTRec's took 5.4 s against 3.5 s from the third on at L=1000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole grid this many times, every model once per round, and keep per "
        "cell the round with the median train time (train_ms_rounds lists every round's): on "
        "a machine whose speed drifts, models of one round ran close together",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=12,
        help="CPU only: address-space limit (RLIMIT_AS) of each child, 0 for none",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config values for every model (YAML values), e.g. attn_dropout_prob=0",
    )
    parser.add_argument(
        "--append", action="store_true", help="merge into an existing speed_<tag>.csv"
    )
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole grid; later runs become skipped rows"
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        default=[],
        metavar="MODEL:L:DTYPE",
        help="also write a torch.profiler table of one training step of these runs",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md and .png from the CSV"
    )
    parser.add_argument("--keep-going", action="store_true", help="run larger L after a failure")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every model's loss and full-ranking functions (the warm-up steps "
        "absorb the compilation; use --warmup 2 or more)",
    )
    parser.add_argument(
        "--fused-layer-norm",
        action="store_true",
        help="swap every model's nn.LayerNorm for the plugin's LayerNorm (Triton on CUDA)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="CPU: run every child with glibc keeping freed memory for reuse (GLIBC_TUNABLES), "
        "so that no model pays for zero-filling fresh pages at each large allocation; the "
        "times then compare compute, not the allocator (RSS stays at its high-water mark)",
    )
    parser.add_argument(
        "--loss",
        choices=["last-position", "all-positions"],
        default="last-position",
        help="the training step's cross-entropy: at the last position (RecBole's prefix "
        "samples) or at every position (all-position training)",
    )
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", help="file name suffix (default: the device)")
    parser.add_argument("--note", default="", help="free text stored with the settings")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def loss_positions(loss: str) -> str:
    return "every position" if loss == "all-positions" else "the last position"


def build_header(args: argparse.Namespace, device: str, overrides: dict) -> dict:
    on_gpu = device == "cuda"
    settings = (
        f"batch {args.batch}, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"CE at {loss_positions(args.loss)} over {args.n_items} items, AdamW; "
        f"{args.warmup} warm-up step(s), then the median of the timed steps (repeats column)"
    )
    header = {
        "device": device,
        **describe_machine(device),
        "torch_threads": args.threads or "default",
        "settings": settings,
        "overrides": overrides or "none (each model's property-file defaults)",
        "torch_compile": "calculate_loss and full_sort_predict of every model"
        if args.compile
        else "off (eager)",
        "layer_norm": "nn.LayerNorm of every model swapped for recbole_hyena's LayerNorm"
        if args.fused_layer_norm
        else "each model's own",
        "timeout_s": args.timeout,
        "cpu_memory_cap_gb": args.max_memory_gb if not on_gpu else "n/a",
        "memory": "torch.cuda.max_memory_allocated per phase"
        if on_gpu
        else "peak RSS of the child process per phase (VmHWM, reset before each phase), "
        "Python + PyTorch (~0.5 GB) included",
        "autograd_anomaly_detection": "off in every run (importing RecBole's sequential "
        "models turns it on; see run_child)",
        "flops": "forward, batch 1, matmul/conv/attention (dense L^2) + FFT (2.5 N log2 N per "
        "real FFT), element-wise ops not counted",
    }
    if not on_gpu:
        header["cpu_allocator"] = (
            f"glibc keeps freed memory (GLIBC_TUNABLES={GLIBC_KEEP_FREED})"
            if args.keep_freed_memory
            else "glibc's defaults (tensors above its mmap threshold are mapped and zero-filled "
            "afresh; models that allocate many large tensors pay for it)"
        )
        header["cpu_sharing"] = (
            "the CPU may be shared with other jobs: see load_before/load_after (1-min load "
            "average) and matmul_gflops (rate of a 512^3 fp32 matrix product measured in the "
            "run, before its steps) per row; times are upper bounds of an idle machine's"
        )
    if args.rounds > 1:
        header["rounds"] = (
            f"{args.rounds} rounds of the whole grid; each cell keeps the round with the median "
            "train time (train_ms_rounds lists every round's, in order, for paired comparisons)"
        )
    if args.note:
        header["note"] = args.note
    return header


def read_header(path: Path) -> dict:
    """The ``# key: value`` lines of an earlier CSV of this script."""
    header = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        header[key] = value
    return header


def write_reports(out: Path, tag: str, rows: list[dict], header: dict) -> None:
    on_gpu = header["device"] == "cuda"
    write_markdown(out / f"speed_{tag}.md", rows, header, on_gpu)
    write_plot(out / f"speed_{tag}.png", rows, header, on_gpu)
    print(f"wrote speed_{tag}.csv, speed_{tag}.md and speed_{tag}.png under {out}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        run_child(json.loads(args.child))
        return []

    import torch
    import yaml

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tag = args.tag or device
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / f"speed_{tag}.csv"
    if args.report_only:
        rows = read_rows(csv_path)
        write_reports(args.out, tag, rows, read_header(csv_path))
        return rows

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but PyTorch sees no CUDA device")
    lengths = sorted(
        args.lengths or DEFAULT_LENGTHS + (GPU_EXTRA_LENGTHS if device == "cuda" else [])
    )
    dtypes = args.dtypes or (["fp32", "bf16"] if device == "cuda" else ["fp32"])
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    header = build_header(args, device, overrides)
    profiles = set(args.profile)
    deadline = time.monotonic() + args.budget if args.budget else math.inf

    kept: list[dict] = read_rows(csv_path) if args.append and csv_path.is_file() else []
    failed_at: dict[tuple[str, str], tuple[int, str]] = {}
    rounds: list[list[dict]] = []
    # Lengths outermost, so that a budget that runs out still leaves every model's short runs.
    cells = [
        (dtype, seq_len, model) for dtype in dtypes for seq_len in lengths for model in args.models
    ]
    for round_index in range(args.rounds):
        rows: list[dict] = []
        rounds.append(rows)
        for dtype, seq_len, model in cells:
            row = {"model": model, "dtype": dtype, "seq_len": seq_len, "batch": args.batch}
            failure = failed_at.get((model, dtype))
            if failure is not None and not args.keep_going:
                row.update(status="skipped", note=f"{failure[1]} at L={failure[0]}")
            elif time.monotonic() + min(args.timeout, 30) > deadline:
                row.update(status="skipped", note=f"over the {args.budget:.0f} s budget")
            else:
                spec = {
                    **row,
                    "device": device,
                    "hidden": args.hidden,
                    "layers": args.layers,
                    "heads": args.heads,
                    "n_items": args.n_items,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    "threads": args.threads,
                    "max_memory_gb": args.max_memory_gb,
                    "overrides": overrides,
                    "compile": args.compile,
                    "fused_layer_norm": args.fused_layer_norm,
                    "keep_freed_memory": args.keep_freed_memory,
                    "loss": args.loss,
                    "seed": args.seed,
                    "profile_to": str(args.out)
                    if f"{model}:{seq_len}:{dtype}" in profiles and round_index == 0
                    else None,
                }
                timeout = min(args.timeout, max(deadline - time.monotonic(), 1))
                row = run_one(spec, timeout, cut_by_budget=timeout < args.timeout)
                row["repeats"] = args.repeats
                if row["status"] != "ok":
                    failed_at[(model, dtype)] = (seq_len, row["status"])
            rows.append(row)
            print(_progress_line(row), flush=True)
            # After every run, so that an interrupted benchmark keeps what finished.
            write_csv(csv_path, merge_rows(kept, combine_rounds(rounds)), header)
    rows = merge_rows(kept, combine_rounds(rounds))
    write_reports(args.out, tag, rows, header)
    return rows


def _progress_line(row: dict) -> str:
    parts = [f"{row['model']:>12} {row['dtype']:>4} L={row['seq_len']:<6} {row['status']:<8}"]
    if row.get("train_ms") not in (None, ""):
        parts.append(f"train {row['train_ms']:>10,.1f} ms")
    if row.get("infer_ms") not in (None, ""):
        parts.append(f"infer {row['infer_ms']:>9,.1f} ms")
    if row.get("train_peak_mb") not in (None, ""):
        parts.append(f"peak {row['train_peak_mb']:>9,.0f} MiB")
    if row.get("note"):
        parts.append(str(row["note"]))
    return "  ".join(parts)


if __name__ == "__main__":
    main()

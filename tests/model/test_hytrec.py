"""HyTRec: built from its property file, trains in both modes, ranks consistently, is causal and
invariant to right padding, and learns a planted pattern that only the time features reveal."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_hyena.config import Config
from recbole_hyena.model.sequential_recommender.hytrec import CausalSelfAttention, HyTRec
from recbole_hyena.model.tadn import TemporalDeltaNet
from tests.conftest import build_model, random_sequences, saved_activations

N_ITEMS = 40
SMALL = {"hidden_size": 16, "inner_size": 32, "n_heads": 2, "short_window": 4, "tadn_chunk_size": 8}


@pytest.fixture(autouse=True)
def _fast_autograd():
    """RecBole's SINE module turns anomaly detection on when it is imported; it slows every
    backward pass several times. One intra-op thread: tiny ops on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.autograd.set_detect_anomaly(False):
        yield
    torch.set_num_threads(threads)


def random_times(items: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Increasing epoch seconds at the items, 0 at padding (as the data path writes them)."""
    generator = torch.Generator().manual_seed(seed)
    gaps = torch.rand(items.shape, generator=generator, dtype=torch.float64) * 1e6
    return (1.5e9 + gaps.cumsum(dim=1)) * (items > 0)


def interaction(items, lengths, times=None, **fields) -> Interaction:
    data = {"item_id_list": items, "item_length": lengths, **fields}
    if times is not None:
        data["timestamp_list"] = times
    return Interaction(data)


def test_builds_from_its_property_file():
    model = build_model("HyTRec", N_ITEMS)
    assert isinstance(model, HyTRec)
    assert model.TIME_SEQ == "timestamp_list"
    kinds = [isinstance(block.mixer, TemporalDeltaNet) for block in model.long_blocks]
    assert kinds == [True, True, True, False]  # 3 TADN : 1 softmax
    assert model.short_window == 50 and model.use_short_branch and model.tadn_time_terms
    config = Config(model="HyTRec", dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["train_mode"] == "autoregressive"
    assert config["normalize_all"] is False  # gaps are read in seconds
    # the generic re-initialisation must not overwrite TADN's gate initialisation
    tadn = model.long_blocks[0].mixer
    assert tadn.decay_bias.std() > 0 and (tadn.norm_weight == 1).all()


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(0, [False] * 4), (1, [True, False, True, False]), (4, [True] * 4)],
)
def test_linear_softmax_ratio(ratio, expected):
    model = build_model("HyTRec", N_ITEMS, linear_softmax_ratio=ratio, **SMALL)
    assert [isinstance(block.mixer, TemporalDeltaNet) for block in model.long_blocks] == expected


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="short_window"):
        build_model("HyTRec", N_ITEMS, short_window=0)
    with pytest.raises(ValueError, match="n_long_layers"):
        build_model("HyTRec", N_ITEMS, n_long_layers=0)


ABLATIONS = [
    {},
    {"use_short_branch": False},
    {"tadn_time_terms": False},
    {"time_gap_embedding": False},
    {"linear_softmax_ratio": 0},
    {"short_window": 25},
    {"long_attn_window": 3},
    {"tadn_conv_size": 0, "n_short_layers": 1},
]


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("mode", ["prefix", "autoregressive"])
def test_trains_a_step(mode, overrides):
    model = build_model("HyTRec", N_ITEMS, train_mode=mode, **{**SMALL, **overrides}).train()
    items, lengths = random_sequences(6, 20, N_ITEMS, seed=1)
    fields = {"item_id": torch.randint(1, N_ITEMS, (6,))}
    if mode == "autoregressive":
        targets = torch.randint(1, N_ITEMS, items.shape) * (items > 0)
        fields["target_item_id_list"] = targets
    batch = interaction(items, lengths, random_times(items), **fields)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.item_embedding.weight.detach().clone()
    loss = model.calculate_loss(batch)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.item_embedding.weight)
    assert model._time_seq is None  # the time list is only held while an entry point runs
    # a few more steps on the same batch lower the loss
    for _ in range(5):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    assert model.calculate_loss(batch).item() < loss.item()


@pytest.mark.parametrize("chunk", [2, "auto"])
def test_block_chunks_change_nothing(chunk):
    """Every layer is per sequence: chunks of the batch give the whole batch's outputs."""
    items, lengths = random_sequences(5, 20, N_ITEMS, seed=4)
    times = random_times(items)
    whole = build_model("HyTRec", N_ITEMS, block_chunk_size=0, **SMALL).eval()
    chunked = build_model("HyTRec", N_ITEMS, block_chunk_size=chunk, **SMALL).eval()
    expected = whole.forward_sequence(items, lengths, times)
    torch.testing.assert_close(chunked.forward_sequence(items, lengths, times), expected)
    with pytest.raises(ValueError, match="block_chunk_size"):
        build_model("HyTRec", N_ITEMS, block_chunk_size=-1)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing each block in the backward replays its dropout masks and its TADN state."""
    items, lengths = random_sequences(5, 20, N_ITEMS, seed=2)
    targets = torch.randint(1, N_ITEMS, items.shape) * (items > 0)
    batch = interaction(items, lengths, random_times(items), target_item_id_list=targets)
    results, kept = [], []
    for checkpointing in (False, True):
        model = build_model("HyTRec", N_ITEMS, gradient_checkpointing=checkpointing, **SMALL)
        model.train()
        torch.manual_seed(3)
        loss, saved = saved_activations(partial(model.calculate_loss, batch))
        kept.append(sum(t.untyped_storage().nbytes() for t in saved))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (plain_loss, plain), (loss, grads) = results
    assert kept[1] < kept[0] / 3  # only the blocks' inputs (and the head's) are kept
    assert plain_loss > 0 and torch.allclose(loss, plain_loss, atol=1e-6)
    assert grads.keys() == plain.keys()
    for name, grad in grads.items():
        if plain[name] is None:
            assert grad is None, name
        else:
            assert torch.allclose(grad, plain[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("use_short_branch", [True, False])
def test_full_sort_predict_agrees_with_predict(use_short_branch):
    model = build_model("HyTRec", N_ITEMS, use_short_branch=use_short_branch, **SMALL)
    items, lengths = random_sequences(5, 20, N_ITEMS, seed=2)
    candidates = torch.randint(1, N_ITEMS, (5,))
    batch = interaction(items, lengths, random_times(items), item_id=candidates)
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        assert scores.shape == (5, N_ITEMS)
        torch.testing.assert_close(model.predict(batch), scores[torch.arange(5), candidates])


LAST_POSITION_CASES = [
    {},  # the short branch's span (2 x 3 + 1 = 7 events) inside L=20
    {"use_short_branch": False},
    {"linear_softmax_ratio": 0},  # softmax attention at the span's positions only
    {"linear_softmax_ratio": 4},  # TADN last
    {"long_attn_window": 3},
    {"n_short_layers": 3, "short_window": 6},  # span 16
    {"short_window": 12},  # span 23 > L: every position runs
    {"block_chunk_size": 2},
]


def last_position_batch():
    """Lengths from 1 to L, some shorter than the short branch's span, some longer."""
    lengths = torch.tensor([1, 2, 6, 7, 8, 13, 19, 20, 20])
    items, _ = random_sequences(9, 20, N_ITEMS, lengths=lengths, seed=5)
    return items, lengths, random_times(items)


@pytest.mark.parametrize("overrides", LAST_POSITION_CASES, ids=lambda o: ",".join(o) or "default")
def test_forward_is_forward_sequence_at_the_last_valid_position(overrides):
    """``forward`` runs the short branch on each scored position's span and the long branch's
    last block at the span's summary positions; the result must not change."""
    model = build_model("HyTRec", N_ITEMS, **{**SMALL, **overrides})
    items, lengths, times = last_position_batch()
    with torch.no_grad():
        full = model.forward_sequence(items, lengths, times)
        torch.testing.assert_close(
            model.forward(items, lengths, times),
            full[torch.arange(9), lengths - 1],
            atol=1e-6,
            rtol=1e-5,
        )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"linear_softmax_ratio": 0}, {"gradient_checkpointing": True, "block_chunk_size": 4}],
    ids=["default", "softmax-last", "checkpointing"],
)
def test_last_position_forward_trains_like_the_full_sequence(overrides):
    """Prefix training's loss and every gradient through ``forward`` equal those through
    ``forward_sequence`` gathered at the last positions (dropout off, training mode)."""
    items, lengths, times = last_position_batch()
    targets = torch.randint(1, N_ITEMS, (9,))
    results = []
    for last_only in (True, False):
        model = build_model("HyTRec", N_ITEMS, hidden_dropout_prob=0.0, **{**SMALL, **overrides})
        model.train()
        if last_only:
            output = model.forward(items, lengths, times)
        else:
            output = model.forward_sequence(items, lengths, times)[torch.arange(9), lengths - 1]
        loss = torch.nn.functional.cross_entropy(model.item_scores(output), targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, grads), (reference_loss, reference_grads) = results
    torch.testing.assert_close(loss, reference_loss)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("overrides", [{}, {"use_short_branch": False}, {"long_attn_window": 3}])
def test_right_padding_invariance(overrides):
    model = build_model("HyTRec", N_ITEMS, **{**SMALL, **overrides})
    items, lengths = random_sequences(4, 13, N_ITEMS, seed=3)
    times = random_times(items)
    padded_items = torch.nn.functional.pad(items, (0, 10))
    padded_times = torch.nn.functional.pad(times, (0, 10))
    with torch.no_grad():
        expected = model.forward_sequence(items, lengths, times)
        outputs = model.forward_sequence(padded_items, lengths, padded_times)
        valid = items > 0
        torch.testing.assert_close(outputs[:, :13][valid], expected[valid], atol=1e-5, rtol=1e-5)
        last = model.full_sort_predict(interaction(padded_items, lengths, padded_times))
        torch.testing.assert_close(
            last, model.full_sort_predict(interaction(items, lengths, times)), atol=1e-5, rtol=1e-5
        )


def test_every_position_is_causal():
    """Changing the item and the time of event s leaves every position before s unchanged."""
    model = build_model("HyTRec", N_ITEMS, **SMALL)
    items, lengths = random_sequences(2, 18, N_ITEMS, lengths=torch.tensor([18, 18]), seed=4)
    times = random_times(items)
    with torch.no_grad():
        expected = model.forward_sequence(items, lengths, times)
        for s in (1, 5, 9, 17):
            changed_items, changed_times = items.clone(), times.clone()
            changed_items[:, s] = changed_items[:, s] % (N_ITEMS - 1) + 1
            changed_times[:, s:] += 12345.0
            outputs = model.forward_sequence(changed_items, lengths, changed_times)
            torch.testing.assert_close(outputs[:, :s], expected[:, :s], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(outputs[:, s], expected[:, s])


def test_time_list_comes_from_the_interaction():
    model = build_model("HyTRec", N_ITEMS, **SMALL)
    items, lengths = random_sequences(3, 12, N_ITEMS, seed=5)
    with torch.no_grad():
        with_times = model.full_sort_predict(interaction(items, lengths, random_times(items)))
        other_times = model.full_sort_predict(interaction(items, lengths, random_times(items, 9)))
        positions = model.full_sort_predict(interaction(items, lengths))
    assert not torch.allclose(with_times, other_times)
    # without a time list, positions stand in: every gap is one event
    gaps, buckets = model.time_gaps(items, None)
    assert ((gaps == 1) == ((items > 0) & (torch.arange(12) > 0))).all()
    assert torch.isfinite(positions).all()
    with pytest.raises(ValueError, match="timestamp_list"):
        model.time_gaps(items, random_times(items)[:, :5])


@pytest.mark.parametrize("seq_len", [1, 4, 9, 16])
def test_windowed_attention_matches_dense_reference(seq_len):
    torch.manual_seed(0)
    window, heads, dim = 4, 2, 8
    attention = CausalSelfAttention(dim, heads, dropout=0.0, window=window).double().eval()
    with torch.no_grad():
        attention.distance_bias.normal_()
        attention.memory_bias.normal_()
    inputs = torch.randn(3, seq_len, dim, dtype=torch.float64)
    memory = torch.randn(3, seq_len, dim, dtype=torch.float64)
    with torch.no_grad():
        outputs = attention(inputs, memory)

        # dense reference: every query against every key, a banded mask, memory as an extra key
        def split(x):
            return x.view(3, -1, heads, dim // heads).transpose(1, 2)

        query, key, value = (split(x) for x in attention.qkv_proj(inputs).chunk(3, dim=-1))
        memory_key, memory_value = (split(x) for x in attention.memory_proj(memory).chunk(2, -1))
        scores = query @ key.transpose(-1, -2) / math.sqrt(dim // heads)
        distance = torch.arange(seq_len).unsqueeze(1) - torch.arange(seq_len).unsqueeze(0)
        band = (distance >= 0) & (distance < window)
        scores = scores + attention.distance_bias[:, distance.clamp(0, window - 1)]
        scores = scores.masked_fill(~band, -math.inf)
        memory_scores = (query * memory_key).sum(-1, keepdim=True) / math.sqrt(dim // heads)
        memory_scores = memory_scores + attention.memory_bias.view(-1, 1, 1)
        weights = torch.cat([scores, memory_scores], dim=-1).softmax(-1)
        expected = weights[..., :seq_len] @ value + weights[..., seq_len:] * memory_value
        expected = attention.out_proj(expected.transpose(1, 2).reshape(3, seq_len, dim))
    torch.testing.assert_close(outputs, expected)


def burst_sequences(n_users: int, seed: int, max_len: int = 10) -> Interaction:
    """A planted recency pattern: a few hourly events, a 30-day pause, then a burst of 2-4
    events a minute apart; the next item is the burst's first item. The burst's length varies,
    so only the time gaps say where it starts (item ids are random and distinct)."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.zeros(n_users, max_len, dtype=torch.long)
    times = torch.zeros(n_users, max_len, dtype=torch.float64)
    lengths = torch.zeros(n_users, dtype=torch.long)
    targets = torch.zeros(n_users, dtype=torch.long)
    for user in range(n_users):
        burst = int(torch.randint(2, 5, (1,), generator=generator))
        history = int(torch.randint(2, max_len - burst + 1, (1,), generator=generator))
        sequence = torch.randperm(N_ITEMS - 1, generator=generator)[: history + burst] + 1
        old = torch.arange(history, dtype=torch.float64) * 3600
        recent = old[-1] + 30 * 86400 + torch.arange(burst, dtype=torch.float64) * 60
        items[user, : history + burst] = sequence
        times[user, : history + burst] = 1.5e9 + torch.cat([old, recent])
        lengths[user], targets[user] = history + burst, sequence[history]
    return interaction(items, lengths, times, item_id=targets)


def train_on_bursts(time_features: bool) -> float:
    """Hit rate @1 on held-out users after 60 steps, with or without any time information."""
    config = {
        "hidden_size": 16,
        "inner_size": 32,
        "n_long_layers": 1,
        "short_window": 5,
        "n_short_layers": 1,
        "hidden_dropout_prob": 0.0,
        "attn_dropout_prob": 0.0,
        "train_mode": "prefix",
        "MAX_ITEM_LIST_LENGTH": 10,
        "tadn_time_terms": time_features,
        "time_gap_embedding": time_features,
    }
    model = build_model("HyTRec", N_ITEMS, **config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    train, test = burst_sequences(1024, seed=0), burst_sequences(512, seed=1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(60):
        batch = train[torch.randint(0, len(train), (64,), generator=generator)]
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model.full_sort_predict(test).argmax(-1) == test["item_id"]).float().mean().item()


def test_learns_a_planted_recency_pattern():
    """Without time the burst's start is a guess among its 2-4 possible lengths (at best 1/3)."""
    with_time, without_time = train_on_bursts(True), train_on_bursts(False)
    assert with_time >= 0.8
    assert without_time <= 0.45
    assert with_time - without_time >= 0.3

"""The paper's baselines (LRURec, HSTU, EulerFormer, Mamba4Rec): causality, right-padding
invariance, a planted pattern learnt, and each fast path against a slow reference."""

import math

import pytest
import torch

from recbole_hyena.model.sequence_layers import (
    euler_rotate,
    linear_recurrence,
    mamba_kernel,
    rope_angles,
    selective_scan,
    varying_linear_recurrence,
)
from recbole_hyena.model.sequential_recommender.hstu import bucketize_time_gaps
from recbole_hyena.model.sequential_recommender.mamba4rec import MambaMixer
from tests.conftest import build_model, random_sequences

MODELS = ["LRURec", "HSTU", "EulerFormer", "Mamba4Rec"]
# Small but complete models: every block type, two layers, tiny widths.
TINY = {
    "hidden_size": 16,
    "inner_size": 32,
    "MAX_ITEM_LIST_LENGTH": 12,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "lru_dropout_prob": 0.0,
    "state_size": 16,
    "attention_size": 8,
    "value_size": 8,
    "d_state": 8,
}
N_ITEMS = 20


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds hand-off cost (and on a busy
    machine, a lot of it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(name: str, **overrides):
    return build_model(name, n_items=N_ITEMS, **{**TINY, **overrides})


def embedding_gradients(model, item_seq, item_seq_len, position):
    """d output[:, position] / d (input embedding) ``[B, L, H]``, through a forward hook."""
    captured = {}

    def hook(module, inputs, output):
        captured["emb"] = output.detach().requires_grad_(True)
        return captured["emb"]

    handle = model.item_embedding.register_forward_hook(hook)
    try:
        output = model.forward_sequence(item_seq, item_seq_len)
        # a random read-out: the plain sum of a LayerNorm output is constant
        weights = torch.randn(output.shape[-1], generator=torch.Generator().manual_seed(0))
        (output[:, position] @ weights.to(output.dtype)).sum().backward()
    finally:
        handle.remove()
    return captured["emb"].grad


# --- causality and padding ----------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [False, True])
def test_output_at_t_has_zero_gradient_from_later_inputs(name, training):
    model = tiny_model(name).double().train(training)
    item_seq, item_seq_len = random_sequences(3, 12, N_ITEMS, lengths=torch.tensor([12, 12, 12]))
    for position in (0, 5, 11):
        grads = embedding_gradients(model, item_seq, item_seq_len, position)
        assert torch.all(grads[:, position + 1 :] == 0), (
            f"{name}: output {position} sees the future"
        )
        assert grads[:, : position + 1].abs().sum() > 0


@pytest.mark.parametrize("name", MODELS)
def test_valid_outputs_ignore_right_padding(name):
    model = tiny_model(name).double()
    item_seq, item_seq_len = random_sequences(4, 12, N_ITEMS, lengths=torch.tensor([3, 7, 12, 1]))
    # garbage after each sequence: what padding positions hold must not matter
    garbage = torch.randint(1, N_ITEMS, item_seq.shape, generator=torch.Generator().manual_seed(5))
    valid = torch.arange(12).unsqueeze(0) < item_seq_len.unsqueeze(1)
    noisy_seq = torch.where(valid, item_seq, garbage)
    with torch.no_grad():
        clean = model.forward_sequence(item_seq, item_seq_len)
        noisy = model.forward_sequence(noisy_seq, item_seq_len)
        # a shorter padded width (the same valid items) gives the same outputs too
        short = model.forward_sequence(item_seq[:, :8], item_seq_len.clamp(max=8))
    assert torch.allclose(clean[valid], noisy[valid], atol=1e-10)
    short_valid = valid[:, :8]
    assert torch.allclose(clean[:, :8][short_valid], short[short_valid], atol=1e-10)
    scores = model.full_sort_predict({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len})
    noisy_scores = model.full_sort_predict(
        {model.ITEM_SEQ: noisy_seq, model.ITEM_SEQ_LEN: item_seq_len}
    )
    assert torch.allclose(scores, noisy_scores, atol=1e-10)


# --- a planted pattern --------------------------------------------------------------------------


def successor(items: torch.Tensor) -> torch.Tensor:
    """The planted rule: item i is followed by i + 1, N_ITEMS - 1 by 1 (0 is padding)."""
    return items % (N_ITEMS - 1) + 1


def pattern_batch(batch: int, seq_len: int, generator: torch.Generator):
    """Right-padded runs of the rule with random starts and lengths, and the per-position
    targets of the all-position data path (the next item, 0 at padding)."""
    lengths = torch.randint(2, seq_len + 1, (batch,), generator=generator)
    starts = torch.randint(1, N_ITEMS, (batch, 1), generator=generator)
    items = (starts - 1 + torch.arange(seq_len)) % (N_ITEMS - 1) + 1
    valid = torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)
    return items * valid, lengths, successor(items) * valid


@pytest.mark.parametrize("name", MODELS)
def test_learns_planted_successor_rule_with_all_position_loss(name):
    torch.manual_seed(0)
    model = tiny_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        item_seq, item_seq_len, targets = pattern_batch(32, 10, generator)
        loss = model.calculate_loss(
            {
                model.ITEM_SEQ: item_seq,
                model.ITEM_SEQ_LEN: item_seq_len,
                model.TARGET_ITEM_SEQ: targets,
            }
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert math.isfinite(loss.item())

    model.eval()
    item_seq, item_seq_len, _ = pattern_batch(200, 10, torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = model.full_sort_predict(
            {model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len}
        )
    last = item_seq.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1)
    accuracy = (scores.argmax(dim=1) == successor(last)).float().mean().item()
    assert accuracy > 0.9, f"{name}: next-item accuracy {accuracy:.2f} (chance {1 / N_ITEMS:.2f})"


@pytest.mark.parametrize("name", MODELS)
def test_prefix_mode_loss_and_predict(name):
    """RecBole's own protocol (no target list): CE on the last position, and ``predict``."""
    model = tiny_model(name)
    item_seq, item_seq_len = random_sequences(5, 12, N_ITEMS)
    interaction = {
        model.ITEM_SEQ: item_seq,
        model.ITEM_SEQ_LEN: item_seq_len,
        model.POS_ITEM_ID: torch.randint(1, N_ITEMS, (5,)),
        model.ITEM_ID: torch.randint(1, N_ITEMS, (5,)),
    }
    loss = model.calculate_loss(interaction)
    loss.backward()
    assert math.isfinite(loss.item())
    full = model.full_sort_predict(interaction)
    picked = full.gather(1, interaction[model.ITEM_ID].unsqueeze(1)).squeeze(1)
    assert torch.allclose(model.predict(interaction), picked, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_trains_under_bf16_autocast(name):
    """RecBole's ``enable_amp`` and ``speed.py --dtype bf16`` run the loss under autocast."""
    model = tiny_model(name).train()
    item_seq, item_seq_len = random_sequences(5, 12, N_ITEMS)
    interaction = {
        model.ITEM_SEQ: item_seq,
        model.ITEM_SEQ_LEN: item_seq_len,
        model.POS_ITEM_ID: torch.randint(1, N_ITEMS, (5,)),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.calculate_loss(interaction)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- LRURec: the scan against the recurrence ----------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 2, 5, 16, 33])
def test_linear_recurrence_matches_step_by_step_loop(seq_len):
    torch.manual_seed(seq_len)
    inputs = torch.randn(2, seq_len, 6, dtype=torch.complex128)
    log_decay = torch.complex(-torch.rand(6, dtype=torch.float64), 6 * torch.rand(6).double())
    expected, state = [], torch.zeros(2, 6, dtype=torch.complex128)
    for t in range(seq_len):
        state = torch.exp(log_decay) * state + inputs[:, t]
        expected.append(state)
    assert torch.allclose(
        linear_recurrence(inputs, log_decay), torch.stack(expected, 1), atol=1e-12
    )


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_lrurec_recurrent_inference_matches_parallel_training_form(dtype, tolerance):
    model = tiny_model("LRURec", MAX_ITEM_LIST_LENGTH=40).to(dtype)
    item_seq, item_seq_len = random_sequences(6, 40, N_ITEMS)
    with torch.no_grad():
        parallel = model.forward_parallel(item_seq, item_seq_len)
        recurrent = model.forward_recurrent(item_seq, item_seq_len)
    valid = torch.arange(40).unsqueeze(0) < item_seq_len.unsqueeze(1)
    assert (parallel[valid] - recurrent[valid]).abs().max() < tolerance
    # eval mode uses the recurrent form (``recurrent_inference``), training the parallel one
    assert model.recurrent_inference
    with torch.no_grad():
        scores = model.full_sort_predict(
            {model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len}
        )
    last = parallel[torch.arange(6), item_seq_len - 1]
    assert (scores - model.item_scores(last)).abs().max() < tolerance * 10


def test_lru_decay_starts_on_the_ring():
    model = tiny_model("LRURec", r_min=0.5, r_max=0.9)
    for layer in model.lru_layers:
        radius = torch.exp(layer.log_decay()).abs()
        assert radius.min() >= 0.5 - 1e-6 and radius.max() <= 0.9 + 1e-6
        # gamma normalises the input: gamma^2 = 1 - |lambda|^2
        assert torch.allclose(torch.exp(2 * layer.gamma_log), 1 - radius**2, atol=1e-5)


# --- HSTU ---------------------------------------------------------------------------------------


def test_hstu_time_bias_uses_timestamps_causally():
    model = tiny_model("HSTU").double()
    item_seq, item_seq_len = random_sequences(3, 12, N_ITEMS, lengths=torch.tensor([12, 9, 5]))
    timestamps = torch.cumsum(torch.randint(1, 10**6, (3, 12)), dim=1).double()
    later = timestamps.clone()
    later[:, 6:] += 10**7  # only positions 6.. change
    with torch.no_grad():
        no_time = model.forward_sequence(item_seq, item_seq_len)
        with_time = model.forward_sequence(item_seq, item_seq_len, timestamps)
        shifted = model.forward_sequence(item_seq, item_seq_len, later)
    assert not torch.allclose(no_time, with_time)
    assert torch.allclose(with_time[:, :6], shifted[:, :6], atol=1e-12)
    assert not torch.allclose(with_time[:, 6:], shifted[:, 6:])
    # the interaction's TIME_FIELD list reaches the model through calculate_loss / predict
    interaction = {
        model.ITEM_SEQ: item_seq,
        model.ITEM_SEQ_LEN: item_seq_len,
        model.TIME_SEQ: timestamps,
    }
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
    last = with_time[torch.arange(3), item_seq_len - 1]
    assert torch.allclose(scores, model.item_scores(last))
    assert model._time_seq is None


def test_hstu_time_buckets_are_log_scale_and_clipped():
    gaps = torch.tensor([0.0, 1.0, 2.0, -2.0, 10.0, 1e6, 1e300])
    buckets = bucketize_time_gaps(gaps, num_buckets=128)
    assert buckets.tolist()[:5] == [0, 0, 2, 2, 7]
    assert buckets[-1] == 128 and buckets[-2] == int(math.log(1e6) / 0.301)


def test_hstu_weights_are_not_normalised_by_softmax():
    """Pointwise attention: scaling the values' input scales the output before the norm, so
    a block does not reduce to a convex combination (contrast with softmax attention)."""
    model = tiny_model("HSTU")
    layer = model.layers[0]
    hidden = torch.randn(2, 12, 16)
    causal = torch.ones(12, 12).tril()
    normed = torch.nn.functional.layer_norm(hidden, (16,), eps=layer.layer_norm_eps)
    _, _, queries, keys = torch.nn.functional.silu(layer.uvqk(normed)).split([8, 8, 8, 8], -1)
    scores = queries @ keys.transpose(1, 2) + layer.relative_bias(12, None)
    weights = torch.nn.functional.silu(scores) / 12 * causal
    assert not torch.allclose(weights.sum(-1), torch.ones(2, 12))


# --- EulerFormer --------------------------------------------------------------------------------


def test_euler_rotation_with_unit_scale_is_rope_and_keeps_norms():
    torch.manual_seed(0)
    inputs = torch.randn(3, 7, 8, dtype=torch.float64)
    angles = rope_angles(7, 8, 10000.0, inputs.device, inputs.dtype)
    rotated = euler_rotate(inputs, angles, 1.0)
    as_complex = torch.view_as_complex(inputs.reshape(3, 7, 4, 2).contiguous())
    expected = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles))
    assert torch.allclose(rotated, expected.reshape(3, 7, 8), atol=1e-12)
    scaled = euler_rotate(inputs, angles, torch.tensor(0.3, dtype=torch.float64), 0.7)
    assert torch.allclose(scaled.norm(dim=-1), inputs.norm(dim=-1), atol=1e-12)


def test_euler_scores_depend_on_relative_positions():
    """Query at i and key at j score the same as at i + c and j + c (any semantic scale)."""
    torch.manual_seed(1)
    query, key = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    angles = rope_angles(20, 8, 10000.0, query.device, query.dtype)
    scale = torch.tensor(0.6, dtype=torch.float64)

    def score(i, j):
        rotated_q = euler_rotate(query.view(1, 8), angles[i : i + 1], scale, 0.2)
        rotated_k = euler_rotate(key.view(1, 8), angles[j : j + 1], scale)
        return (rotated_q * rotated_k).sum()

    assert torch.allclose(score(5, 2), score(15, 12), atol=1e-12)
    assert not torch.allclose(score(5, 2), score(5, 4))


# --- Mamba4Rec: the selective scan --------------------------------------------------------------


def direct_selective_scan(u, delta, A, B, C, D, z):
    """O(L^2) reference: h_t = sum_{s<=t} exp(A sum_{r=s+1..t} dt_r) dt_s B_s u_s."""
    outputs = torch.zeros_like(u)
    seq_len = u.shape[-1]
    for t in range(seq_len):
        for s in range(t + 1):
            decay = torch.exp(A.unsqueeze(0) * delta[:, :, s + 1 : t + 1].sum(-1).unsqueeze(-1))
            contribution = (
                decay * (delta[:, :, s] * u[:, :, s]).unsqueeze(-1) * B[:, :, s].unsqueeze(1)
            )
            outputs[:, :, t] += (contribution * C[:, :, t].unsqueeze(1)).sum(-1)
    return (outputs + u * D.unsqueeze(-1)) * torch.nn.functional.silu(z)


@pytest.mark.parametrize("parallel", [False, True])
def test_selective_scan_matches_direct_sum(parallel):
    torch.manual_seed(0)
    batch, channels, d_state, seq_len = 2, 3, 4, 9
    u, z = (
        torch.randn(batch, channels, seq_len).double(),
        torch.randn(batch, channels, seq_len).double(),
    )
    delta_raw = torch.randn(batch, channels, seq_len).double()
    bias = torch.randn(channels).double()
    A = -torch.rand(channels, d_state).double() * 2
    B, C = (
        torch.randn(batch, d_state, seq_len).double(),
        torch.randn(batch, d_state, seq_len).double(),
    )
    D = torch.randn(channels).double()
    fast = selective_scan(
        u, delta_raw, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, parallel=parallel
    )
    delta = torch.nn.functional.softplus(delta_raw + bias.unsqueeze(-1))
    assert torch.allclose(fast, direct_selective_scan(u, delta, A, B, C, D, z), atol=1e-10)


@pytest.mark.parametrize("seq_len", [1, 2, 7, 64, 300])
def test_parallel_and_stepwise_recurrences_agree_with_their_gradients(seq_len):
    # strong decay over a long sequence: a cumulative-sum formulation would overflow here
    torch.manual_seed(1)
    decay = torch.rand(3, 5, seq_len, 4, dtype=torch.float64) ** 8
    inputs = torch.randn(3, 5, seq_len, 4, dtype=torch.float64) * 100
    results = []
    for parallel in (False, True):
        a, x = decay.clone().requires_grad_(), inputs.clone().requires_grad_()
        states = varying_linear_recurrence(a, x, parallel=parallel)
        grads = torch.autograd.grad(
            (states * torch.cos(states)).sum(), (a, x), allow_unused=True, materialize_grads=True
        )
        results.append((states, *grads))
    for stepwise, doubled in zip(*results):
        assert torch.isfinite(doubled).all()
        assert torch.allclose(stepwise, doubled, rtol=1e-9, atol=1e-9)


def test_mamba_block_keeps_mamba_initialisation_after_recbole_pass():
    model = tiny_model("Mamba4Rec")
    for mixer in model.mixers:
        assert torch.allclose(-torch.exp(mixer.A_log[0]), -torch.arange(1.0, 9.0))
        dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
        assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
        assert mixer.scan_backend == "auto" and not mixer.uses_kernel(torch.zeros(1))


def test_unknown_torch_scan_is_refused_by_name():
    with pytest.raises(ValueError, match=r"torch_scan \[fast\]"):
        tiny_model("Mamba4Rec", torch_scan="fast")


# --- GPU ---------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("name", MODELS)
def test_gpu_matches_cpu(name):
    model = tiny_model(name, scan_backend="torch")
    item_seq, item_seq_len = random_sequences(4, 12, N_ITEMS)
    with torch.no_grad():
        cpu = model.forward_sequence(item_seq, item_seq_len)
        gpu = model.cuda().forward_sequence(item_seq.cuda(), item_seq_len.cuda())
    valid = torch.arange(12).unsqueeze(0) < item_seq_len.unsqueeze(1)
    assert torch.allclose(cpu[valid], gpu.cpu()[valid], atol=1e-4)


@needs_cuda
@pytest.mark.skipif(mamba_kernel() is None, reason="needs the mamba-ssm package")
def test_mamba_ssm_kernel_matches_pytorch_scan():
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=32, d_state=16, d_conv=4, expand=2).cuda()
    inputs = torch.randn(4, 50, 32, device="cuda", requires_grad=True)
    mixer.scan_backend = "mamba_ssm"
    fused = mixer(inputs)
    (fused_grad,) = torch.autograd.grad(fused.square().sum(), inputs)
    mixer.scan_backend = "torch"
    plain = mixer(inputs)
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), inputs)
    assert torch.allclose(fused, plain, atol=1e-4, rtol=1e-3)
    assert torch.allclose(fused_grad, plain_grad, atol=1e-3, rtol=1e-2)

"""TADN: the chunked and fla kernels against the recurrent reference, the layer's step-by-step
form, causality and a bounded state over 10,000 events."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from recbole_hyena.model.tadn import (
    TemporalDeltaNet,
    delta_rule_chunked,
    delta_rule_fla,
    delta_rule_recurrent,
    fla_available,
    gated_delta_rule,
    resolve_backend,
)


@pytest.fixture(autouse=True)
def _single_thread():
    """The recurrent loops are thousands of tiny ops: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_rule_inputs(batch, heads, seq_len, d_k=8, d_v=6, seed=0, dtype=torch.float64):
    """Random q, k (unit), v, log alpha (down to the clamp at -20, and exactly 0) and beta
    (including 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    query = F.normalize(randn(batch, heads, seq_len, d_k), dim=-1)
    key = F.normalize(randn(batch, heads, seq_len, d_k), dim=-1)
    value = randn(batch, heads, seq_len, d_v)
    log_alpha = -torch.rand(batch, heads, seq_len, generator=generator, dtype=dtype) * 3
    beta = torch.rand(batch, heads, seq_len, generator=generator, dtype=dtype)
    if seq_len > 4:
        log_alpha[..., 1], log_alpha[..., 3] = 0.0, -20.0
        beta[..., 2], beta[..., 4] = 0.0, 1.0
    initial_state = randn(batch, heads, d_v, d_k)
    return query, key, value, log_alpha, beta, initial_state


@pytest.mark.parametrize("seq_len", [1, 7, 16, 17, 33, 64, 100])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_recurrent(seq_len, with_state):
    query, key, value, log_alpha, beta, state = random_rule_inputs(2, 3, seq_len, seed=seq_len)
    state = state if with_state else None
    expected, expected_state = delta_rule_recurrent(query, key, value, log_alpha, beta, state)
    for chunk_size in (16, 64):
        outputs, last_state = delta_rule_chunked(
            query, key, value, log_alpha, beta, chunk_size, state
        )
        torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(last_state, expected_state, atol=1e-5, rtol=0)


def test_chunked_gradients_match_recurrent():
    inputs = random_rule_inputs(1, 2, 21, seed=3)
    inputs = [x.requires_grad_() for x in inputs[:5]]
    weights = torch.randn(1, 2, 21, 6, dtype=torch.float64)
    (delta_rule_recurrent(*inputs)[0] * weights).sum().backward()
    expected = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    (delta_rule_chunked(*inputs, chunk_size=8)[0] * weights).sum().backward()
    for x, grad in zip(inputs, expected):
        torch.testing.assert_close(x.grad, grad, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("seq_len, chunk_size", [(1, 4), (5, 4), (12, 4), (9, 16)])
def test_chunked_backward_passes_gradcheck(seq_len, chunk_size):
    """The written-out backward against finite differences, for every input, the initial state
    and a loss on the last state as well (whole, partial and single chunks, padded ends)."""
    inputs = random_rule_inputs(2, 2, seq_len, d_k=4, d_v=3, seed=seq_len)
    inputs = [x.requires_grad_() for x in inputs]

    def rule(q, k, v, log_alpha, beta, state):
        return delta_rule_chunked(q, k, v, log_alpha, beta, chunk_size, state)

    assert torch.autograd.gradcheck(rule, inputs)


def test_chunked_backward_with_one_unused_output():
    """Gradients through the outputs alone and through the last state alone (autograd passes
    None for the other) agree with the recurrent reference."""
    inputs = [x.requires_grad_() for x in random_rule_inputs(1, 2, 19, seed=5)]
    for pick in (0, 1):
        grads = []
        for rule in (delta_rule_recurrent, delta_rule_chunked):
            result = rule(*inputs[:5], initial_state=inputs[5])[pick]
            grads.append(
                torch.autograd.grad(
                    result.square().sum(), inputs, allow_unused=True, materialize_grads=True
                )
            )
        for chunked, reference in zip(grads[1], grads[0]):
            torch.testing.assert_close(chunked, reference, atol=1e-8, rtol=1e-6)


def test_backend_selection():
    cpu = torch.zeros(1)
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("recurrent", cpu) == "recurrent"
    with pytest.raises(ValueError, match="tadn_backend"):
        resolve_backend("triton", cpu)
    with pytest.raises(ValueError, match="tadn_backend"):
        TemporalDeltaNet(16, 2, backend="cuda")


@pytest.mark.parametrize("time_terms", [True, False])
@pytest.mark.parametrize("conv_size", [0, 4])
def test_layer_step_matches_forward(time_terms, conv_size):
    torch.manual_seed(0)
    layer = TemporalDeltaNet(16, 2, conv_size=conv_size, time_terms=time_terms, chunk_size=8)
    layer = layer.double().eval()
    inputs = torch.randn(3, 21, 16, dtype=torch.float64)
    gaps = torch.rand(3, 21, dtype=torch.float64) * 5
    expected = layer(inputs, gaps)
    cache, outputs = None, []
    for t in range(inputs.shape[1]):
        output, cache = layer.step(inputs[:, t], gaps[:, t], cache)
        outputs.append(output)
    torch.testing.assert_close(torch.stack(outputs, dim=1), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer(inputs, gaps, backend="recurrent"), expected)


def test_time_terms_follow_the_equations():
    """alpha = exp(-softplus(a) delta - softplus(w x + b)), beta = min(1, sigmoid(w x)(1 + gamma f))."""
    torch.manual_seed(0)
    layer = TemporalDeltaNet(8, 2).double()
    inputs = torch.randn(1, 4, 8, dtype=torch.float64)
    gaps = torch.tensor([[0.0, 0.5, 3.0, 100.0]], dtype=torch.float64)
    log_alpha, beta = layer.gates(inputs, gaps)
    data_decay = F.softplus(layer.decay_proj(inputs) + layer.decay_bias).transpose(1, 2)
    time_decay = F.softplus(layer.time_decay).view(1, -1, 1) * gaps.unsqueeze(1)
    torch.testing.assert_close(log_alpha, (-data_decay - time_decay).clamp(min=-20))
    recency = torch.exp(-F.softplus(layer.recency_rate).view(1, -1, 1) * gaps.unsqueeze(1))
    write = torch.sigmoid(layer.write_proj(inputs)).transpose(1, 2)
    gain = F.softplus(layer.recency_gain).view(1, -1, 1)
    torch.testing.assert_close(beta, (write * (1 + gain * recency)).clamp(max=1))
    # a longer gap forgets more and writes less
    assert (log_alpha[..., 3] < log_alpha[..., 1]).all()


def test_masked_events_keep_the_state():
    torch.manual_seed(0)
    layer = TemporalDeltaNet(8, 2, conv_size=0).double()
    inputs = torch.randn(1, 6, 8, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False, False]])
    log_alpha, beta = layer.gates(inputs, torch.ones(1, 6, dtype=torch.float64), mask)
    assert (log_alpha[..., 3:] == 0).all() and (beta[..., 3:] == 0).all()


@pytest.mark.parametrize("time_terms", [True, False])
def test_layer_is_causal(time_terms):
    torch.manual_seed(0)
    layer = TemporalDeltaNet(8, 2, time_terms=time_terms, chunk_size=4).double()
    inputs = torch.randn(2, 11, 8, dtype=torch.float64, requires_grad=True)
    gaps = (torch.rand(2, 11, dtype=torch.float64) * 3).requires_grad_()
    outputs = layer(inputs, gaps)
    for t in range(11):
        grad_inputs, grad_gaps = torch.autograd.grad(
            outputs[:, t].sum(), (inputs, gaps), retain_graph=True, allow_unused=True
        )
        assert (grad_inputs[:, t + 1 :] == 0).all()
        if time_terms:
            assert (grad_gaps[:, t + 1 :] == 0).all()
        else:
            assert grad_gaps is None
        assert grad_inputs[:, t].abs().sum() > 0


@pytest.mark.parametrize("time_terms", [True, False])
def test_state_stays_bounded_over_10k_events(time_terms):
    """With beta <= 1, unit keys and alpha <= 1 every step is a contraction plus a write of
    norm <= |v|, so the state cannot blow up even with almost no decay (gaps of 0)."""
    torch.manual_seed(0)
    seq_len, layer = 10_000, TemporalDeltaNet(64, 2, conv_size=0, time_terms=time_terms)
    with torch.no_grad():
        layer.decay_bias.fill_(-12.0)  # softplus(-12) ~ 6e-6: barely any data-driven decay
        inputs = torch.randn(1, seq_len, 64) * 3
        gaps = torch.zeros(1, seq_len)
        gaps[:, ::1000] = 5.0  # now and then a long pause
        qkv = layer.qkv_proj(inputs)
        query, key, value = layer._qkv(qkv)
        log_alpha, beta = layer.gates(inputs, gaps)
        norms, state = [], None
        for start in range(0, seq_len, 500):
            window = slice(start, start + 500)
            _, state = delta_rule_recurrent(
                query[:, :, window],
                key[:, :, window],
                value[:, :, window],
                log_alpha[..., window],
                beta[..., window],
                state,
            )
            norms.append(torch.linalg.matrix_norm(state, ord=2).max())
    norms = torch.stack(norms)
    assert torch.isfinite(norms).all()
    # the spectral norm of S is at most sqrt(d_k) max |v| (S stores at most d_k directions)
    bound = layer.head_dim**0.5 * value.norm(dim=-1).max()
    assert norms.max() <= bound
    # no drift: the second half is no larger than the first
    assert norms[10:].max() <= 1.2 * norms[:10].max()


def test_gated_delta_rule_dispatch():
    query, key, value, log_alpha, beta, _ = random_rule_inputs(1, 2, 9)
    expected, _ = delta_rule_recurrent(query, key, value, log_alpha, beta)
    for backend in ("auto", "torch", "recurrent"):
        outputs, _ = gated_delta_rule(query, key, value, log_alpha, beta, backend, chunk_size=4)
        torch.testing.assert_close(outputs, expected)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_chunked_rule_cuda_gradients_match_cpu():
    """The written-out backward on CUDA (library triangular solves) against CPU's (row
    substitution)."""
    inputs = random_rule_inputs(2, 2, 70, d_k=16, d_v=16, seed=7)
    results = []
    for device in ("cpu", "cuda"):
        leaves = [x.to(device).requires_grad_() for x in inputs]
        outputs, state = delta_rule_chunked(*leaves[:5], 32, leaves[5])
        loss = outputs.square().sum() + state.square().sum()
        results.append([g.cpu() for g in torch.autograd.grad(loss, leaves)])
    for on_cuda, on_cpu in zip(results[1], results[0]):
        torch.testing.assert_close(on_cuda, on_cpu, atol=1e-8, rtol=1e-6)


@needs_cuda
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    layer = TemporalDeltaNet(32, 2, backend="torch")
    inputs, gaps = torch.randn(2, 150, 32), torch.rand(2, 150) * 3
    expected = layer(inputs, gaps)
    outputs = layer.cuda()(inputs.cuda(), gaps.cuda()).cpu()
    torch.testing.assert_close(outputs, expected, atol=1e-4, rtol=1e-4)


@needs_cuda
@pytest.mark.skipif(not fla_available(), reason="needs flash-linear-attention")
@pytest.mark.parametrize("seq_len", [1, 50, 64, 300])
def test_fla_matches_recurrent(seq_len):
    query, key, value, log_alpha, beta, state = random_rule_inputs(
        2, 2, seq_len, d_k=32, d_v=32, dtype=torch.float32
    )
    expected, expected_state = delta_rule_recurrent(
        *(x.double() for x in (query, key, value, log_alpha, beta, state))
    )
    cuda = [x.cuda() for x in (query, key, value, log_alpha, beta, state)]
    outputs, last_state = delta_rule_fla(*cuda)
    assert resolve_backend("auto", cuda[0]) == "fla"
    # fla computes in fp32 with tf32 matmuls inside the kernels
    torch.testing.assert_close(outputs.double().cpu(), expected, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(last_state.double().cpu(), expected_state, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("trains_here", [True, False])
def test_auto_backend_trains_with_torch_where_fla_has_no_backward(monkeypatch, trains_here):
    """fla refuses the gated backward on some GPU/Triton pairs: ``auto`` must not pick it then."""
    import recbole_hyena.model.tadn as tadn

    monkeypatch.setattr(tadn, "fla_available", lambda: True)
    monkeypatch.setattr(tadn, "fla_trains_here", lambda: trains_here)
    cuda_like = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, requires_grad=True)
    assert resolve_backend("auto", cuda_like) == ("fla" if trains_here else "torch")
    with torch.no_grad():  # inference needs no backward: fla's forward is fine everywhere
        assert resolve_backend("auto", cuda_like) == "fla"
    assert resolve_backend("auto", SimpleNamespace(**{**vars(cuda_like), "is_cuda": False})) == (
        "torch"
    )


@needs_cuda
@pytest.mark.skipif(not fla_available(), reason="needs flash-linear-attention")
def test_fla_auto_backend_trains_a_layer_on_cuda():
    """A training step through ``auto`` on this GPU: fla's backward where it has one."""
    torch.manual_seed(0)
    layer = TemporalDeltaNet(32, 2, chunk_size=16).cuda()
    inputs = torch.randn(2, 150, 32, device="cuda", requires_grad=True)
    gaps = torch.rand(2, 150, device="cuda") * 3
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = layer(inputs, gaps)
    outputs.float().square().mean().backward()
    assert torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0

"""HyenaRec's ablation family: each variant is HyenaRec under its own property file."""

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_hyena.model.filters import (
    ChebyshevKernelGenerator,
    FourierKernelGenerator,
    ImplicitKernelGenerator,
    LegendreKernelGenerator,
)
from recbole_hyena.model.layers import CausalShortConv
from recbole_hyena.model.sequential_recommender.hyenarec import HyenaRec
from recbole_hyena.utils import get_model

from conftest import build_model, random_sequences

# name: (kernel generator, GLU, short-conv dilation)
VARIANTS = {
    "HyenaRec": (LegendreKernelGenerator, True, 1),
    "HyenaRecWoPK": (ImplicitKernelGenerator, True, 1),
    "HyenaRecWoGLU": (LegendreKernelGenerator, False, 1),
    "HyenaRecFourier": (FourierKernelGenerator, True, 1),
    "HyenaRecChebyshev": (ChebyshevKernelGenerator, True, 1),
    "HyenaVanilla": (ImplicitKernelGenerator, False, 1),
    "AtrousHyena": (ImplicitKernelGenerator, False, 2),
}
N_ITEMS, SEQ_LEN = 40, 12
TINY = {"hidden_size": 8, "inner_size": 16, "filter_order": 8, "implicit_filter_width": 8}


def tiny_model(name: str):
    return build_model(name, N_ITEMS, MAX_ITEM_LIST_LENGTH=SEQ_LEN, **TINY)


def batch(model, all_positions: bool) -> Interaction:
    items, lengths = random_sequences(6, SEQ_LEN, N_ITEMS, seed=1)
    fields = {
        model.ITEM_SEQ: items,
        model.ITEM_SEQ_LEN: lengths,
        model.POS_ITEM_ID: torch.randint(1, N_ITEMS, (6,)),
    }
    if all_positions:
        # Next item at every position but the last one of each sequence.
        targets = torch.roll(items, -1, dims=1)
        targets[torch.arange(6), lengths - 1] = 0
        fields[model.TARGET_ITEM_SEQ] = targets
    return Interaction(fields)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_is_registered_with_its_own_settings(name):
    generator_class, glu, dilation = VARIANTS[name]
    assert issubclass(get_model(name), HyenaRec)
    model = tiny_model(name)
    for block in model.blocks:
        mixer = block.mixer
        assert type(mixer.long_filter) is generator_class
        assert mixer.short_path.glu is glu
        assert mixer.short_path.short_conv.conv.dilation == (dilation,)


@pytest.mark.parametrize("all_positions", [False, True], ids=["prefix", "autoregressive"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_a_step_and_evaluates(name, all_positions):
    model = tiny_model(name).train()
    interaction = batch(model, all_positions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    loss = model.calculate_loss(interaction)
    assert loss.ndim == 0 and torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    long_filter = model.blocks[0].mixer.long_filter
    assert all(param.grad is not None for param in long_filter.parameters())
    changed = [
        key for key, value in model.state_dict().items() if not torch.equal(value, before[key])
    ]
    assert any(".long_filter." in key for key in changed)

    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        interaction.update(Interaction({model.ITEM_ID: torch.arange(1, 7)}))
        pointwise = model.predict(interaction)
    assert scores.shape == (6, N_ITEMS) and torch.isfinite(scores).all()
    assert torch.allclose(pointwise, scores[torch.arange(6), torch.arange(1, 7)], atol=1e-5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_is_causal(name):
    """Changing the items after position t leaves the outputs up to t unchanged."""
    model = tiny_model(name)
    items, lengths = random_sequences(3, SEQ_LEN, N_ITEMS, lengths=torch.full((3,), SEQ_LEN))
    changed = items.clone()
    changed[:, 7:] = torch.randint(1, N_ITEMS, (3, SEQ_LEN - 7))
    with torch.no_grad():
        output = model.forward_sequence(items, lengths)
        output_changed = model.forward_sequence(changed, lengths)
    assert torch.allclose(output[:, :7], output_changed[:, :7], atol=1e-6)
    assert not torch.allclose(output[:, 7:], output_changed[:, 7:])


@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 2), (2, 3), (4, 2)])
def test_atrous_short_conv_sees_exactly_its_dilated_taps(kernel_size, dilation):
    conv = CausalShortConv(2, kernel_size, dilation)
    assert conv.receptive_field == (kernel_size - 1) * dilation + 1
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
    inputs = torch.randn(1, 2, 20, requires_grad=True)
    for t in range(20):
        (gradient,) = torch.autograd.grad(conv(inputs)[0, 0, t], inputs)
        seen = set(gradient[0, 0].nonzero().flatten().tolist())
        assert seen == {t - j * dilation for j in range(kernel_size) if t - j * dilation >= 0}
        assert gradient[0, 1].abs().sum() == 0  # depth-wise: channels do not mix


def test_atrous_hyena_operator_is_causal_by_autograd():
    """AtrousHyena's mixer: d output_t / d input_s vanishes for every s > t (up to the FFT's
    float32 rounding, ~1e-11 here, against gradients of order 1e-4 from the past)."""
    operator = tiny_model("AtrousHyena").blocks[0].mixer
    inputs = torch.randn(2, SEQ_LEN, TINY["hidden_size"], requires_grad=True)
    outputs = operator(inputs)
    for t in range(SEQ_LEN - 1):
        (gradient,) = torch.autograd.grad(outputs[:, t].sum(), inputs, retain_graph=True)
        past = gradient[:, : t + 1].abs().max()
        assert past > 0
        assert gradient[:, t + 1 :].abs().max() <= 1e-5 * past


@pytest.mark.slow
def test_one_variant_end_to_end_on_ml100k(tmp_path):
    """``run_recbole_hyena`` trains, validates and tests a variant, and its checkpoint reloads."""
    from recbole_hyena.quick_start import run_recbole_hyena
    from recbole_hyena.trainer import load_checkpoint

    result = run_recbole_hyena(
        "HyenaRecChebyshev",
        "ml-100k",
        config_dict={
            **TINY,
            "MAX_ITEM_LIST_LENGTH": 10,
            "n_layers": 1,
            "epochs": 1,
            "train_batch_size": 1024,
            "show_progress": False,
            "use_gpu": False,
            "state": "warning",
        },
    )
    for metric in ("ndcg@10", "ndcg@20", "recall@10", "recall@20"):
        assert 0 <= result["test_result"][metric] <= 1
    (checkpoint_file,) = (tmp_path / "saved").glob("HyenaRecChebyshev-*.pth")
    checkpoint = load_checkpoint(str(checkpoint_file))
    assert checkpoint["config"]["filter_type"] == "chebyshev"
    assert checkpoint["state_dict"]["blocks.0.mixer.long_filter.coefficients"].shape == (8, 16)

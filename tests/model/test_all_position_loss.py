"""The all-item cross-entropy of all-position training, computed a block of score rows at a time
with its gradients in the forward pass, equals autograd's loss and gradients."""

from __future__ import annotations

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_hyena.model import abstract_recommender
from recbole_hyena.model.abstract_recommender import all_items_cross_entropy
from tests.conftest import build_model, random_sequences


def plain_cross_entropy(queries, item_matrix, bias, targets):
    scores = queries @ item_matrix.t()
    return torch.nn.functional.cross_entropy(scores if bias is None else scores + bias, targets)


def loss_and_gradients(loss_function, tensors, targets, autocast=False):
    tensors = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_function(*tensors, targets)
    loss.backward()
    return loss.detach(), [None if t is None else t.grad for t in tensors]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_blockwise_loss_and_gradients_equal_autograd(monkeypatch, with_bias, autocast):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(23, 8, generator=generator)
    item_matrix = torch.randn(11, 8, generator=generator)
    bias = torch.randn(11, generator=generator) if with_bias else None
    targets = torch.randint(0, 11, (23,), generator=generator)
    # 5 rows of 11 float32 scores a block: 23 rows make 5 blocks, the last one partial
    monkeypatch.setattr(abstract_recommender, "CPU_SCORE_BYTES", 5 * 11 * 4)
    tensors = (queries, item_matrix, bias)
    loss, grads = loss_and_gradients(all_items_cross_entropy, tensors, targets, autocast)
    expected, expected_grads = loss_and_gradients(plain_cross_entropy, tensors, targets, autocast)
    tolerance = {"atol": 1e-2, "rtol": 1e-2} if autocast else {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(loss, expected, **tolerance)
    for grad, expected_grad in zip(grads, expected_grads):
        if expected_grad is None:
            assert grad is None
        else:
            assert grad.dtype == expected_grad.dtype
            torch.testing.assert_close(grad, expected_grad, **tolerance)


@pytest.mark.parametrize(
    ("model_name", "overrides"),
    [("HyenaRec", {}), ("HSTU", {"l2_norm": True}), ("HSTU", {"l2_norm": False}), ("SASRec", {})],
)
def test_all_position_loss_equals_the_scores_cross_entropy(model_name, overrides):
    """Through a model: the same loss and gradients as cross-entropy over ``item_scores``,
    including a model that scores by cosine similarity (HSTU's ``l2_norm``) and a RecBole model
    through its adapter (no item bias)."""
    items, lengths = random_sequences(4, 12, 30, seed=3)
    targets = torch.randint(1, 30, items.shape, generator=torch.Generator().manual_seed(4))
    targets = targets * (items > 0)
    batch = Interaction(
        {"item_id_list": items, "item_length": lengths, "target_item_id_list": targets}
    )
    results = []
    for blockwise in (True, False):
        model = build_model(model_name, 30, hidden_dropout_prob=0.0, **overrides).train()
        if blockwise:
            loss = model.calculate_loss(batch)
        else:
            has_target = targets > 0
            output = model.forward_sequence(items, lengths)[has_target]
            scores = model.item_scores(output)
            loss = torch.nn.functional.cross_entropy(scores, targets[has_target])
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected)
    for name, grad in expected_grads.items():
        if grad is None:
            assert grads[name] is None, name
        else:
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)

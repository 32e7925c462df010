"""The all-position adapters of RecBole's zoo: the output at every position is what RecBole's own
model computes for the prefix ending there, nothing later leaks in, and training works."""

import pytest
import torch
from recbole.model.sequential_recommender.narm import NARM as RecBoleNARM

from recbole_hyena.config import Config
from recbole_hyena.model.sequential_recommender.zoo_adapters import NARM
from tests.conftest import DatasetStub, build_model, random_sequences

N_ITEMS = 30
SEQ_LEN = 10


def score_blocks_of(model: NARM, batch: int, queries: int) -> int:
    """The ``score_block_elements`` that makes ``model`` build ``queries`` query positions per
    block for a ``[batch, SEQ_LEN]`` input."""
    return queries * batch * SEQ_LEN * model.hidden_size


def recbole_narm() -> RecBoleNARM:
    """RecBole's own NARM class with the same config and seed as ``build_model('NARM')``."""
    config = Config(
        model="NARM",
        dataset="ml-100k",
        config_dict={"use_gpu": False, "MAX_ITEM_LIST_LENGTH": SEQ_LEN},
    )
    torch.manual_seed(0)
    return RecBoleNARM(config, DatasetStub(N_ITEMS)).eval()


def test_plugin_narm_is_recboles_narm_with_its_parameters():
    adapter = build_model("NARM", n_items=N_ITEMS, MAX_ITEM_LIST_LENGTH=SEQ_LEN)
    assert isinstance(adapter, RecBoleNARM)
    reference = recbole_narm()
    assert adapter.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(adapter.state_dict()[name], tensor), name


@pytest.mark.parametrize("queries_per_block", [SEQ_LEN, 3, 1])  # 3: a shorter last block
def test_every_position_matches_recbole_narm_on_its_prefix(queries_per_block, monkeypatch):
    adapter = build_model("NARM", n_items=N_ITEMS, MAX_ITEM_LIST_LENGTH=SEQ_LEN).double()
    monkeypatch.setattr(
        adapter, "score_block_elements", score_blocks_of(adapter, 4, queries_per_block)
    )
    reference = recbole_narm().double()
    item_seq, item_seq_len = random_sequences(4, SEQ_LEN, N_ITEMS, torch.tensor([10, 6, 1, 3]))
    with torch.no_grad():
        every = adapter.forward_sequence(item_seq, item_seq_len)  # [B, L, E]
        for position in range(SEQ_LEN):
            prefix_len = torch.minimum(item_seq_len, torch.tensor(position + 1))
            prefix = item_seq * (torch.arange(SEQ_LEN) < prefix_len.unsqueeze(1))
            expected = reference.forward(prefix, prefix_len)
            has_position = item_seq_len > position
            torch.testing.assert_close(every[has_position, position], expected[has_position])
        # prefix mode (RecBole's samples) is RecBole's NARM unchanged
        torch.testing.assert_close(
            adapter.forward(item_seq, item_seq_len), reference.forward(item_seq, item_seq_len)
        )


@pytest.mark.parametrize("queries_per_block", [SEQ_LEN, 3, 1])
def test_output_at_t_has_zero_gradient_from_later_items(queries_per_block, monkeypatch):
    model = build_model("NARM", n_items=N_ITEMS, MAX_ITEM_LIST_LENGTH=SEQ_LEN).double().train()
    monkeypatch.setattr(model, "score_block_elements", score_blocks_of(model, 3, queries_per_block))
    model.emb_dropout.p = model.ct_dropout.p = 0.0
    item_seq, item_seq_len = random_sequences(3, SEQ_LEN, N_ITEMS, torch.full((3,), SEQ_LEN))
    embeddings = model.item_embedding(item_seq).detach().requires_grad_(True)
    model.item_embedding.register_forward_hook(lambda *_: embeddings)
    output = model.forward_sequence(item_seq, item_seq_len)
    for position in (0, 4, SEQ_LEN - 1):
        (grad,) = torch.autograd.grad(output[:, position].sum(), embeddings, retain_graph=True)
        assert torch.all(grad[:, position + 1 :] == 0), f"output {position} sees the future"
        assert grad[:, : position + 1].abs().sum() > 0


def test_recomputed_blocks_give_the_same_gradients(monkeypatch):
    """Training builds the scores a block at a time and recomputes them in the backward pass:
    the gradients are those of the one-block computation."""
    item_seq, item_seq_len = random_sequences(4, SEQ_LEN, N_ITEMS, torch.tensor([10, 6, 1, 3]))
    targets = torch.randint(1, N_ITEMS, item_seq.shape) * item_seq.gt(0)
    grads = []
    for queries_per_block in (SEQ_LEN, 1):  # one block, stored; one query per block, recomputed
        model = build_model("NARM", n_items=N_ITEMS, MAX_ITEM_LIST_LENGTH=SEQ_LEN).double()
        monkeypatch.setattr(
            model, "score_block_elements", score_blocks_of(model, 4, queries_per_block)
        )
        model.emb_dropout.p = model.ct_dropout.p = 0.0
        loss = model.calculate_loss(
            {
                model.ITEM_SEQ: item_seq,
                model.ITEM_SEQ_LEN: item_seq_len,
                model.TARGET_ITEM_SEQ: targets,
            }
        )
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_learns_a_planted_successor_rule_at_every_position():
    torch.manual_seed(0)
    model = build_model("NARM", n_items=N_ITEMS, MAX_ITEM_LIST_LENGTH=SEQ_LEN).train()
    assert isinstance(model, NARM)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)

    def batch():
        starts = torch.randint(1, N_ITEMS, (32, 1), generator=generator)
        items = (starts - 1 + torch.arange(SEQ_LEN + 1)) % (N_ITEMS - 1) + 1
        return {
            model.ITEM_SEQ: items[:, :-1],
            model.ITEM_SEQ_LEN: torch.full((32,), SEQ_LEN),
            model.TARGET_ITEM_SEQ: items[:, 1:],
        }

    for _ in range(150):
        optimizer.zero_grad()
        model.calculate_loss(batch()).backward()
        optimizer.step()
    model.eval()
    held_out = batch()
    with torch.no_grad():
        scores = model.item_scores(
            model.forward_sequence(held_out[model.ITEM_SEQ], held_out[model.ITEM_SEQ_LEN])
        )
    accuracy = (scores.argmax(-1) == held_out[model.TARGET_ITEM_SEQ]).float().mean().item()
    assert accuracy > 0.9, accuracy

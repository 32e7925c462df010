"""FlashSASRec is RecBole's SASRec on fused attention: same state dict, same outputs."""

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from recbole_hyena.config import Config
from recbole_hyena.model.sequential_recommender.flashsasrec import (
    FlashSASRec,
    SDPAMultiHeadAttention,
)
from recbole_hyena.model.sequential_recommender.zoo_adapters import SASRec as AdaptedSASRec
from tests.conftest import DatasetStub, build_model, random_sequences

N_ITEMS = 40
MAX_LEN = 50


def recbole_sasrec(model_class=RecBoleSASRec) -> RecBoleSASRec:
    """RecBole's own SASRec class (not the plugin's adapter) with RecBole's SASRec.yaml."""
    config_dict = {"use_gpu": False, "MAX_ITEM_LIST_LENGTH": MAX_LEN}
    config = Config(model="SASRec", dataset="ml-100k", config_dict=config_dict)
    torch.manual_seed(1)
    return model_class(config, DatasetStub(N_ITEMS)).eval()


def flash_sasrec_like(reference: RecBoleSASRec) -> FlashSASRec:
    model = build_model("FlashSASRec", N_ITEMS, MAX_ITEM_LIST_LENGTH=MAX_LEN)
    model.load_state_dict(reference.state_dict())
    return model.eval()


def left_padded(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The same items moved to the end of each row."""
    return torch.stack([row.roll(int(row.size(0) - n)) for row, n in zip(item_seq, lengths)])


def test_fused_attention_replaces_recbole_attention_with_the_same_parameters():
    reference = recbole_sasrec()
    model = flash_sasrec_like(reference)
    assert model.state_dict().keys() == reference.state_dict().keys()
    attentions = [layer.multi_head_attention for layer in model.trm_encoder.layer]
    assert len(attentions) == model.n_layers
    assert all(type(attention) is SDPAMultiHeadAttention for attention in attentions)


@pytest.mark.parametrize("seq_len", [1, 2, 9, 33, MAX_LEN])
def test_outputs_match_recbole_sasrec(seq_len):
    reference = recbole_sasrec()
    model = flash_sasrec_like(reference)
    lengths = torch.randint(1, seq_len + 1, (6,), generator=torch.Generator().manual_seed(seq_len))
    lengths[0], lengths[-1] = seq_len, 1  # a full row and a single item
    item_seq, _ = random_sequences(6, seq_len, N_ITEMS, lengths=lengths, seed=seq_len)
    interaction = Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths})
    with torch.no_grad():
        assert model.get_attention_mask(item_seq) is None  # right-padded: the fused causal path
        torch.testing.assert_close(
            model.forward(item_seq, lengths),
            reference.forward(item_seq, lengths),
            atol=1e-5,
            rtol=0,
        )
        torch.testing.assert_close(
            model.full_sort_predict(interaction),
            reference.full_sort_predict(interaction),
            atol=1e-5,
            rtol=0,
        )


def test_other_padding_layouts_match_recbole_sasrec_at_every_item():
    reference = recbole_sasrec(AdaptedSASRec)  # RecBole's SASRec, output at every position
    model = flash_sasrec_like(reference)
    item_seq, lengths = random_sequences(5, 12, N_ITEMS, lengths=torch.tensor([12, 7, 3, 1, 5]))
    item_seq = left_padded(item_seq, lengths)
    item_seq[0, 4] = 0  # a hole inside a sequence
    with torch.no_grad():
        assert model.get_attention_mask(item_seq) is not None  # the explicit-mask path
        expected = reference.forward_sequence(item_seq, lengths)
        outputs = model.forward_sequence(item_seq, lengths)
    is_item = item_seq > 0
    assert torch.isfinite(outputs).all()
    torch.testing.assert_close(outputs[is_item], expected[is_item], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["right", "left"])
def test_causal_by_autograd(layout):
    model = build_model("FlashSASRec", N_ITEMS, MAX_ITEM_LIST_LENGTH=MAX_LEN)
    seq_len = 16
    lengths = torch.tensor([16, 11, 4])
    item_seq, _ = random_sequences(3, seq_len, N_ITEMS, lengths=lengths)
    if layout == "left":
        item_seq = left_padded(item_seq, lengths)
    embeddings = []
    handle = model.item_embedding.register_forward_hook(
        lambda module, args, output: embeddings.append(output) or output.retain_grad()
    )
    t = 6
    # a random projection, not the plain sum: the sum of a LayerNorm'd row is its bias sum, a
    # constant, whose gradient is zero or rounding noise depending on the CPU's kernels
    weights = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(0))
    (model.forward_sequence(item_seq, lengths)[:, t] @ weights).sum().backward()
    handle.remove()
    grad = embeddings[0].grad  # [B, L, H]
    assert (grad[:, t + 1 :] == 0).all()
    assert grad[0, : t + 1].abs().sum() > 0


def test_empty_rows_give_no_nan_in_either_mask_path():
    model = build_model("FlashSASRec", N_ITEMS, MAX_ITEM_LIST_LENGTH=MAX_LEN, attn_dropout_prob=0.1)
    model.train()
    item_seq, lengths = random_sequences(3, 10, N_ITEMS, lengths=torch.tensor([10, 4, 1]))
    item_seq[2] = 0  # a row with no items at all
    for batch in (item_seq, left_padded(item_seq, lengths)):
        outputs = model.forward_sequence(batch, lengths)
        outputs.sum().backward()
        assert torch.isfinite(outputs).all()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("layout", ["right", "left"])
def test_last_position_forward_trains_like_the_full_sequence(layout):
    """``forward`` runs the last layer at the scored positions only (one query each); in both
    mask paths its outputs, loss and every gradient equal ``forward_sequence`` gathered there
    (dropout off, training mode)."""
    item_seq, lengths = random_sequences(6, 15, N_ITEMS, lengths=torch.tensor([15, 9, 4, 1, 12, 7]))
    positions = lengths - 1
    if layout == "left":
        item_seq = left_padded(item_seq, lengths)
        positions = torch.full_like(lengths, 14)  # the last item of each row
    targets = torch.randint(1, N_ITEMS, (6,), generator=torch.Generator().manual_seed(1))
    results = []
    for last_only in (True, False):
        model = build_model(
            "FlashSASRec",
            N_ITEMS,
            MAX_ITEM_LIST_LENGTH=MAX_LEN,
            hidden_dropout_prob=0.0,
            attn_dropout_prob=0.0,
        ).train()
        if last_only:
            output = model.forward(item_seq, positions + 1)
        else:
            output = model.forward_sequence(item_seq, lengths)[torch.arange(6), positions]
        loss = torch.nn.functional.cross_entropy(output @ model.item_embedding.weight.T, targets)
        loss.backward()
        results.append((output.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (output, grads), (expected, expected_grads) = results
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("train_mode", ["prefix", "autoregressive"])
def test_a_training_step_in_both_modes(train_mode):
    model = build_model(
        "FlashSASRec", N_ITEMS, MAX_ITEM_LIST_LENGTH=MAX_LEN, attn_dropout_prob=0.2
    ).train()
    item_seq, lengths = random_sequences(8, 20, N_ITEMS)
    fields = {model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: lengths}
    if train_mode == "prefix":
        fields[model.POS_ITEM_ID] = torch.randint(1, N_ITEMS, (8,))
    else:
        targets = torch.randint(1, N_ITEMS, item_seq.shape).masked_fill(item_seq == 0, 0)
        fields[model.TARGET_ITEM_SEQ] = targets
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.trm_encoder.layer[0].multi_head_attention.query.weight.detach().clone()
    loss = model.calculate_loss(Interaction(fields))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.trm_encoder.layer[0].multi_head_attention.query.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_runs_under_bf16_autocast():
    model = build_model("FlashSASRec", N_ITEMS, MAX_ITEM_LIST_LENGTH=MAX_LEN)
    item_seq, lengths = random_sequences(4, MAX_LEN, N_ITEMS)
    with torch.no_grad():
        expected = model.forward(item_seq, lengths)
        model.cuda()
        outputs = model.forward(item_seq.cuda(), lengths.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outputs_bf16 = model.forward(item_seq.cuda(), lengths.cuda())
    torch.testing.assert_close(outputs.cpu(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outputs_bf16.float().cpu(), expected, atol=0.1, rtol=0.05)

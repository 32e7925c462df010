"""HyenaRec as a RecBole model: causality, padding, lengths, scoring, losses, learning."""

from functools import partial

import pytest
import torch

from recbole_hyena.model.abstract_recommender import sequences_per_chunk

from conftest import build_model, random_sequences, saved_activations


def interaction(item_seq, item_seq_len, **extra):
    return {"item_id_list": item_seq, "item_length": item_seq_len, **extra}


def loss_and_gradients(model, loss):
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def assert_same_loss_and_gradients(result, reference, atol=1e-6):
    """A ``loss_and_gradients`` result agrees with the reference's loss and every gradient."""
    (loss, grads), (reference_loss, reference_grads) = result, reference
    assert torch.allclose(loss, reference_loss, atol=atol)
    for name, grad in reference_grads.items():
        assert torch.allclose(grads[name], grad, atol=atol), name


def test_outputs_do_not_depend_on_later_items():
    model = build_model(MAX_ITEM_LIST_LENGTH=30)
    items, _ = random_sequences(4, 30, 50, lengths=torch.full((4,), 30))
    reference = model.forward_sequence(items, torch.full((4,), 30))
    changed = items.clone()
    changed[:, 17:] = torch.randint(1, 50, (4, 13))
    output = model.forward_sequence(changed, torch.full((4,), 30))
    assert torch.allclose(output[:, :17], reference[:, :17], atol=1e-5)
    assert not torch.allclose(output[:, 17:], reference[:, 17:], atol=1e-3)


def test_right_padding_never_changes_valid_outputs():
    model = build_model(MAX_ITEM_LIST_LENGTH=200)
    items, lengths = random_sequences(6, 50, 50)
    short = model.forward_sequence(items, lengths)
    padded = torch.cat([items, torch.zeros(6, 150, dtype=items.dtype)], dim=1)
    long = model.forward_sequence(padded, lengths)
    valid = (items > 0).unsqueeze(-1)
    assert torch.allclose(long[:, :50] * valid, short * valid, atol=1e-5)
    assert torch.allclose(model.forward(padded, lengths), model.forward(items, lengths), atol=1e-5)


@pytest.mark.parametrize("seq_len", [50, 200])
def test_runs_at_the_paper_lengths(seq_len):
    model = build_model(MAX_ITEM_LIST_LENGTH=seq_len)
    items, lengths = random_sequences(3, seq_len, 50)
    assert model.forward(items, lengths).shape == (3, 64)


def test_full_sort_predict_agrees_with_predict():
    model = build_model()
    items, lengths = random_sequences(5, 20, 50)
    all_scores = model.full_sort_predict(interaction(items, lengths))
    assert all_scores.shape == (5, 50)
    candidates = torch.randint(1, 50, (5,))
    scores = model.predict(interaction(items, lengths, item_id=candidates))
    assert torch.allclose(scores, all_scores[torch.arange(5), candidates], atol=1e-5)


def test_all_position_loss_is_cross_entropy_at_every_target():
    model = build_model()
    items, lengths = random_sequences(4, 20, 50)
    targets = torch.randint(1, 50, items.shape) * (items > 0)
    loss = model.calculate_loss(interaction(items, lengths, target_item_id_list=targets))
    logits = model.item_scores(model.forward_sequence(items, lengths))  # [B, L, n_items]
    expected = torch.nn.functional.cross_entropy(logits[targets > 0], targets[targets > 0])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_prefix_losses_ce_and_bpr():
    items, lengths = random_sequences(4, 20, 50)
    positives, negatives = torch.randint(1, 50, (4,)), torch.randint(1, 50, (4,))
    ce = build_model().calculate_loss(interaction(items, lengths, item_id=positives))
    bpr = build_model(loss_type="BPR").calculate_loss(
        interaction(items, lengths, item_id=positives, neg_item_id=negatives)
    )
    assert ce.item() > 0 and bpr.item() > 0


def test_own_initialisations_survive_recboles_generic_pass():
    model = build_model()
    operator = model.blocks[0].mixer
    assert torch.equal(operator.skip, torch.ones_like(operator.skip))
    # the filter coefficients keep their N(0, 1/P) scale, not initializer_range (0.02)
    assert operator.long_filter.coefficients.std() > 0.05


def test_learns_a_planted_successor_pattern():
    """Next item = previous item + 1: chance is 1/49, a sequence model should get most right."""
    n_items = 50
    model = build_model(n_items=n_items, hidden_dropout_prob=0.0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    starts = torch.randint(1, n_items - 1, (64, 1))
    sequences = (starts + torch.arange(21)) % (n_items - 1) + 1
    items, targets, lengths = sequences[:, :-1], sequences[:, 1:], torch.full((64,), 20)
    for _ in range(60):
        loss = model.calculate_loss(interaction(items, lengths, target_item_id_list=targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    predicted = model.full_sort_predict(interaction(items, lengths)).argmax(dim=-1)
    assert (predicted == targets[:, -1]).float().mean() > 0.9


def test_bad_filter_type_names_the_option():
    with pytest.raises(ValueError, match="filter_type"):
        build_model(filter_type="wavelet")


@pytest.mark.parametrize("chunk, dropout", [(0, 0.2), (3, 0.0)])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(chunk, dropout):
    """Recomputation replays the forward's dropout masks; chunks of 3 sequences draw their masks
    chunk by chunk, so they match the plain model without dropout."""
    items, lengths = random_sequences(7, 20, 50)
    targets = torch.randint(1, 50, items.shape) * (items > 0)
    batch = interaction(items, lengths, target_item_id_list=targets)
    results, kept = [], []
    for checkpointing in (False, True):  # the plain model runs the whole batch at once
        model = build_model(
            gradient_checkpointing=checkpointing,
            block_chunk_size=chunk if checkpointing else 0,
            hidden_dropout_prob=dropout,
        )
        model.train()
        torch.manual_seed(1)
        loss, saved = saved_activations(partial(model.calculate_loss, batch))
        kept.append(sum(t.untyped_storage().nbytes() for t in saved))
        results.append(loss_and_gradients(model, loss))
    plain, checkpointed = results
    assert_same_loss_and_gradients(checkpointed, plain)
    assert kept[1] < kept[0] / 2  # only the blocks' inputs (and the head's) are kept


def test_bad_block_chunk_size_names_the_option():
    for bad in (-1, "big"):
        with pytest.raises(ValueError, match="block_chunk_size"):
            build_model(block_chunk_size=bad)


def test_block_chunks_give_the_same_outputs():
    items, lengths = random_sequences(7, 20, 50)
    whole = build_model().forward_sequence(items, lengths)
    chunked = build_model(block_chunk_size=3).forward_sequence(items, lengths)
    assert torch.allclose(chunked, whole, atol=1e-6)


def test_long_kernels_are_built_once_per_forward_not_per_chunk(monkeypatch):
    model = build_model(block_chunk_size=2)
    calls = []
    for block in model.blocks:
        generator = block.mixer.long_filter
        monkeypatch.setattr(generator, "forward", partial(record_call, calls, generator.forward))
    items, lengths = random_sequences(7, 20, 50)  # four chunks
    model.forward_sequence(items, lengths)
    assert len(calls) == len(model.blocks)


def record_call(calls: list, function, *args):
    calls.append(args)
    return function(*args)


def test_auto_block_chunks_keep_cpu_tensors_small_and_change_nothing():
    model = build_model(MAX_ITEM_LIST_LENGTH=2000, block_chunk_size="auto")
    items = torch.ones(128, 2000, dtype=torch.long)
    # 384 short-path channels x 2000 positions x 4 bytes per sequence, 24 MiB per chunk
    chunk = sequences_per_chunk(model.block_chunk_size, items, model._bytes_per_position())
    assert chunk == 24 * 2**20 // (384 * 2000 * 4)
    items, lengths = random_sequences(5, 30, 50)
    whole = build_model(MAX_ITEM_LIST_LENGTH=30).forward_sequence(items, lengths)
    auto = build_model(MAX_ITEM_LIST_LENGTH=30, block_chunk_size="auto")
    assert torch.allclose(auto.forward_sequence(items, lengths), whole, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_in_outputs_and_gradients_and_under_bf16_autocast():
    """The CUDA path has its own FFT sizes and a padded short-path product."""
    model = build_model(MAX_ITEM_LIST_LENGTH=300, n_items=200)
    items, lengths = random_sequences(4, 300, 200)
    targets = torch.randint(1, 200, (4,))
    batch = interaction(items, lengths, item_id=targets)
    cpu_loss = model.calculate_loss(batch)
    cpu_loss.backward()
    cpu_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    with torch.no_grad():
        cpu_last = model.forward(items, lengths)  # the last block at one position per row
    gpu_batch = {key: value.cuda() for key, value in batch.items()}
    model.cuda()
    gpu_loss = model.calculate_loss(gpu_batch)
    gpu_loss.backward()
    assert torch.allclose(cpu_loss, gpu_loss.cpu(), atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad.cpu(), cpu_grads[name], atol=1e-5, rtol=1e-3), name
    with torch.no_grad():
        full = model.forward_sequence(gpu_batch["item_id_list"], gpu_batch["item_length"])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model.forward_sequence(gpu_batch["item_id_list"], gpu_batch["item_length"])
        last = model.forward(gpu_batch["item_id_list"], gpu_batch["item_length"])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half_last = model.forward(gpu_batch["item_id_list"], gpu_batch["item_length"])
    assert torch.isfinite(half).all()
    assert (half.float() - full).norm() / full.norm() < 0.05
    assert torch.allclose(last.cpu(), cpu_last, atol=1e-5)
    assert (half_last.float() - last).norm() / last.norm() < 0.05


@pytest.mark.slow
def test_torch_compile_gives_the_same_outputs_and_gradients():
    eager, compiled = build_model(), build_model(torch_compile=True)
    items, lengths = random_sequences(4, 20, 50)
    outputs = [model.forward_sequence(items, lengths) for model in (eager, compiled)]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    weights = torch.randn_like(outputs[0])  # not the square: LayerNorm'd rows have a fixed norm
    for output in outputs:
        (output * weights).sum().backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is None:  # not on the path of forward_sequence (the item bias)
            assert q.grad is None, name
        else:
            assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3), name
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    with torch.no_grad():
        last = [model.forward(items, lengths) for model in (eager, compiled)]
    assert torch.allclose(last[0], last[1], atol=1e-5)


def test_forward_is_forward_sequence_at_the_last_valid_position():
    """``forward`` normalises only the gathered positions; the result must not change."""
    model = build_model(MAX_ITEM_LIST_LENGTH=40)
    items, lengths = random_sequences(6, 40, 50)
    full = model.forward_sequence(items, lengths)
    expected = full[torch.arange(6), lengths - 1]
    assert torch.allclose(model.forward(items, lengths), expected, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"block_chunk_size": 3}, {"gradient_checkpointing": True, "block_chunk_size": 4}],
)
def test_last_position_forward_trains_like_the_full_sequence(overrides):
    """``forward`` runs the last block at the scored positions only; its loss and every gradient
    must equal those of ``forward_sequence`` gathered there (dropout off, training mode)."""
    items, lengths = random_sequences(7, 30, 50)
    targets = torch.randint(1, 50, (7,))
    results = []
    for last_only in (True, False):
        model = build_model(MAX_ITEM_LIST_LENGTH=30, hidden_dropout_prob=0.0, **overrides)
        model.train()
        if last_only:
            output = model.forward(items, lengths)
        else:
            output = model.forward_sequence(items, lengths)[torch.arange(7), lengths - 1]
        loss = torch.nn.functional.cross_entropy(model.item_scores(output), targets)
        results.append(loss_and_gradients(model, loss))
    assert_same_loss_and_gradients(*results)


@pytest.mark.parametrize("model_name", ["HyenaRec", "HyenaVanilla"])
def test_trains_after_a_first_call_under_inference_mode(model_name):
    """Serving code may score first under ``torch.inference_mode``; the kernel generator's cached
    basis (or positional features) built then must not be inference tensors, which training
    cannot save for backward."""
    model = build_model(model_name)
    items, lengths = random_sequences(3, 20, 50)
    with torch.inference_mode():
        model.full_sort_predict(interaction(items, lengths))
    model.train()
    loss = model.calculate_loss(interaction(items, lengths, item_id=torch.tensor([1, 2, 3])))
    loss.backward()
    assert torch.isfinite(loss)

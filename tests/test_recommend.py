"""Recommendations from a bundle written by a real (tiny, one-epoch) training run: the same top-k
as the model's ``full_sort_predict``, for users and for new sequences, with history masking,
truncation to ``MAX_ITEM_LIST_LENGTH`` and unknown tokens handled."""

from __future__ import annotations

import csv
import glob
import json
import os
import random

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_hyena.checkpoint import ModelBundle, load_bundle, load_model
from recbole_hyena.config import Config
from recbole_hyena.data import create_dataset, data_preparation
from recbole_hyena.quick_start import run_recbole_hyena
from recbole_hyena.recommend import Recommender, main, read_sequences, reads_time_list
from recbole_hyena.utils import get_model
from tests.conftest import build_model

MAX_LEN = 10
N_USERS, N_ITEMS = 30, 25


def write_tiny_dataset(folder: str) -> dict[str, list[str]]:
    """Token ids unlike RecBole's internal ones; some histories longer than MAX_LEN."""
    rng = random.Random(0)
    histories = {
        f"user-{u}": [f"item-{rng.randint(1, N_ITEMS)}" for _ in range(rng.randint(4, 25))]
        for u in range(1, N_USERS + 1)
    }
    os.makedirs(os.path.join(folder, "tiny"), exist_ok=True)
    with open(os.path.join(folder, "tiny", "tiny.inter"), "w", encoding="utf-8") as file:
        file.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, items in histories.items():
            file.writelines(f"{user}\t{item}\t{position}\n" for position, item in enumerate(items))
    return histories


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One training run (1 epoch, hidden 16, L=10) in a temporary folder; its bundle."""
    folder = tmp_path_factory.mktemp("run")
    previous = os.getcwd()
    os.chdir(folder)  # RecBole writes log/ and saved/ into the working directory
    try:
        histories = write_tiny_dataset(str(folder / "data"))
        config_dict = {
            "data_path": str(folder / "data"),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": MAX_LEN,
            "hidden_size": 16,
            "inner_size": 32,
            "n_layers": 1,
            "epochs": 1,
            "show_progress": False,
            "use_gpu": False,
            "state": "WARNING",
        }
        run_recbole_hyena("HyenaRec", "tiny", config_dict=config_dict, saved=True)
        config = Config(model="HyenaRec", dataset="tiny", config_dict=config_dict)
        dataset = create_dataset(config)
        _, _, test_data = data_preparation(config, dataset)
    finally:
        os.chdir(previous)
    bundles = glob.glob(str(folder / "saved" / "*.bundle.pt"))
    return {
        "folder": folder,
        "bundles": bundles,
        "histories": histories,
        "dataset": dataset,
        "test_data": test_data,
    }


@pytest.fixture(scope="module")
def recommender(trained):
    """Padding to MAX_LEN as RecBole does, so that scores can be compared exactly."""
    return Recommender.from_file(
        trained["bundles"][0], device="cpu", batch_size=7, trim_padding=False
    )


def reference_top_k(model, dataset, histories, users, k, exclude_history):
    """Top-k straight from ``full_sort_predict``: RecBole's token mapping, a hand-built padded
    batch of the last MAX_LEN items, history items and padding set to -inf."""
    token_to_id = dataset.field2token_id[dataset.iid_field]
    id_to_token = dataset.field2id_token[dataset.iid_field]
    item_seq = torch.zeros(len(users), MAX_LEN, dtype=torch.long)
    item_seq_len = torch.zeros(len(users), dtype=torch.long)
    for row, user in enumerate(users):
        ids = [token_to_id[token] for token in histories[user]][-MAX_LEN:]
        item_seq[row, : len(ids)] = torch.tensor(ids)
        item_seq_len[row] = len(ids)
    with torch.no_grad():
        scores = model.full_sort_predict(
            Interaction({model.ITEM_SEQ: item_seq, model.ITEM_SEQ_LEN: item_seq_len})
        )
    scores[:, 0] = -torch.inf
    if exclude_history:
        for row, user in enumerate(users):
            scores[row, [token_to_id[token] for token in histories[user]]] = -torch.inf
    top_scores, top_ids = torch.topk(scores, k)
    return [[id_to_token[i] for i in row] for row in top_ids.tolist()], top_scores


def test_training_run_writes_a_bundle_beside_its_checkpoint(trained):
    assert len(trained["bundles"]) == 1
    checkpoint = trained["bundles"][0].replace(".bundle.pt", ".pth")
    assert os.path.isfile(checkpoint)
    bundle = load_bundle(trained["bundles"][0])
    assert bundle.model == "HyenaRec" and bundle.max_seq_length == MAX_LEN
    assert set(bundle.user_ids) == set(trained["histories"])


def test_stored_histories_are_the_time_ordered_dump(trained):
    bundle = load_bundle(trained["bundles"][0])
    for user, items in trained["histories"].items():
        stored = bundle.user_history(bundle.user_ids[user]).tolist()
        assert [bundle.item_tokens[i] for i in stored] == items


@pytest.mark.parametrize("exclude_history", [True, False])
def test_users_top_k_equals_full_sort_predict(trained, recommender, exclude_history):
    model, _ = load_model(trained["bundles"][0])
    users = list(trained["histories"])
    expected_items, expected_scores = reference_top_k(
        model, trained["dataset"], trained["histories"], users, 5, exclude_history
    )
    results = recommender.recommend_users(users, k=5, exclude_history=exclude_history)
    assert [result.key for result in results] == users
    assert [result.items for result in results] == expected_items
    torch.testing.assert_close(torch.tensor([result.scores for result in results]), expected_scores)


def test_test_batches_top_k_equals_full_sort_predict(trained, recommender):
    """The sequences of RecBole's own test batches, scored by the model and by recommend."""
    model = recommender.model
    dataset = trained["dataset"]
    id_to_token = dataset.field2id_token[dataset.iid_field]
    n_batches = 0
    for interaction, *_ in trained["test_data"]:
        with torch.no_grad():
            scores = model.full_sort_predict(interaction)
        scores[:, 0] = -torch.inf
        expected = [[id_to_token[i] for i in row] for row in torch.topk(scores, 5)[1].tolist()]
        item_seq, item_seq_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
        sequences = [
            [id_to_token[i] for i in row[:length]]
            for row, length in zip(item_seq.tolist(), item_seq_len.tolist())
        ]
        results = recommender.recommend_sequences(sequences, k=5, exclude_history=False)
        assert [result.items for result in results] == expected
        n_batches += 1
    assert n_batches > 0


def test_new_sequence_equals_user_with_the_same_history(trained, recommender):
    histories = trained["histories"]
    assert any(len(items) > MAX_LEN for items in histories.values())
    by_user = recommender.recommend_users(list(histories), k=8)
    by_sequence = recommender.recommend_sequences(histories, k=8)
    assert [(r.items, r.scores) for r in by_sequence] == [(r.items, r.scores) for r in by_user]
    assert [r.key for r in by_sequence] == list(histories)


def test_long_sequences_keep_their_last_items(trained, recommender):
    long_history = max(trained["histories"].values(), key=len)
    assert len(long_history) > MAX_LEN
    full, tail = recommender.recommend_sequences(
        [long_history, long_history[-MAX_LEN:]], k=6, exclude_history=False
    )
    assert full.items == tail.items


def test_history_is_excluded_by_default(trained, recommender):
    histories = trained["histories"]
    catalogue = N_ITEMS + 5  # more than there are items: every unseen item comes back
    for result in recommender.recommend_users(list(histories), k=catalogue):
        seen = set(histories[result.key])
        assert not seen & set(result.items)
        assert len(result.items) == len(recommender.bundle.item_tokens) - 1 - len(seen)
        assert result.scores == sorted(result.scores, reverse=True)


def test_batch_size_does_not_change_results(trained):
    users = list(trained["histories"])
    small = Recommender.from_file(trained["bundles"][0], "cpu", batch_size=4, trim_padding=False)
    large = Recommender.from_file(trained["bundles"][0], "cpu", batch_size=1000, trim_padding=False)
    # The same top-k; scores up to float error (the last block's per-position layers run on
    # [batch, H] rows, whose BLAS kernels round differently for different batch sizes).
    small_results, large_results = small.recommend_users(users), large.recommend_users(users)
    assert [r.items for r in small_results] == [r.items for r in large_results]
    for one, other in zip(small_results, large_results):
        torch.testing.assert_close(torch.tensor(one.scores), torch.tensor(other.scores))


def test_trimmed_padding_ranks_as_full_padding(trained, recommender):
    """HyenaRec passes the load-time check, and padding each batch to its longest history (in
    length order) gives the full-padding top-k, scores equal up to float error."""
    trimmed = Recommender.from_file(trained["bundles"][0], device="cpu", batch_size=8)
    assert trimmed.trim_padding
    users = list(trained["histories"])
    for exclude_history in (True, False):
        expected = recommender.recommend_users(users, k=6, exclude_history=exclude_history)
        results = trimmed.recommend_users(users, k=6, exclude_history=exclude_history)
        assert [r.key for r in results] == users
        assert [r.items for r in results] == [r.items for r in expected]
        torch.testing.assert_close(
            torch.tensor([r.scores for r in results]), torch.tensor([r.scores for r in expected])
        )


class PaddingSensitiveModel(torch.nn.Module):
    """Scores that depend on the padded length: trimming must stay off for such a model."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items

    def full_sort_predict(self, interaction) -> torch.Tensor:
        item_seq = interaction["item_id_list"]
        scores = torch.arange(self.n_items, dtype=torch.float).repeat(len(item_seq), 1)
        return scores * item_seq.shape[1]


def test_padding_check_refuses_a_length_dependent_model(recommender):
    model = recommender.model
    try:
        recommender.model = PaddingSensitiveModel(recommender.bundle.n_items)
        assert not recommender._padding_invariant()
    finally:
        recommender.model = model
    assert recommender._padding_invariant()  # HyenaRec itself passes


def test_unknown_tokens_are_skipped_and_reported(trained, recommender, caplog):
    history = trained["histories"]["user-1"]
    with caplog.at_level("WARNING"):
        noisy, clean, empty = recommender.recommend_sequences(
            {"noisy": ["no-such-item", *history, "nor-this"], "clean": history, "empty": ["x"]}
        )
    assert noisy.unknown_items == ["no-such-item", "nor-this"]
    assert (noisy.items, noisy.scores) == (clean.items, clean.scores)
    assert empty.items == [] and empty.note == "no known item"
    assert "3 unknown item token(s) in 2 sequence(s)" in caplog.text

    known, unknown = recommender.recommend_users(["user-2", "user-404"])
    assert known.items and unknown.items == [] and unknown.note == "unknown user"
    (only_unknown,) = recommender.recommend_users(["user-404"])
    assert only_unknown.items == [] and only_unknown.note == "unknown user"
    assert recommender.recommend_users([]) == []


def test_command_line_writes_csv_and_jsonl(trained, recommender, tmp_path):
    bundle = trained["bundles"][0]
    users = ["user-3", "user-7"]
    expected = {r.key: r.items for r in recommender.recommend_users(users, k=4)}

    out_csv = str(tmp_path / "top.csv")
    main([bundle, "--users", *users, "-k", "4", "--device", "cpu", "--output", out_csv])
    with open(out_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"] * 2
    assert {user: [r["item"] for r in rows if r["user"] == user] for user in users} == expected

    sequences = tmp_path / "new.jsonl"
    histories = trained["histories"]
    sequences.write_text(
        json.dumps({"id": "a", "items": histories["user-3"]})
        + "\n"
        + json.dumps(histories["user-7"] + ["unknown"])
        + "\n"
    )
    out_jsonl = str(tmp_path / "top.jsonl")
    main([bundle, "--sequences", str(sequences), "-k", "4", "--output", out_jsonl])
    with open(out_jsonl) as file:
        records = [json.loads(line) for line in file]
    assert [record["id"] for record in records] == ["a", "2"]
    assert [record["items"] for record in records] == [expected["user-3"], expected["user-7"]]
    assert records[1]["unknown_items"] == ["unknown"]

    sequences_csv = tmp_path / "new.csv"
    sequences_csv.write_text("id,items\nb," + " ".join(histories["user-7"]) + "\n")
    main([bundle, "--sequences", str(sequences_csv), "-k", "4", "--output", out_csv])
    with open(out_csv, newline="") as file:
        assert [row["item"] for row in csv.DictReader(file)] == expected["user-7"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(trained, recommender):
    users = list(trained["histories"])
    on_gpu = Recommender.from_file(trained["bundles"][0], device="cuda")
    cpu_results = recommender.recommend_users(users, k=5)
    gpu_results = on_gpu.recommend_users(users, k=5)
    torch.testing.assert_close(
        torch.tensor([r.scores for r in gpu_results]),
        torch.tensor([r.scores for r in cpu_results]),
        rtol=1e-4,
        atol=1e-4,
    )


def test_models_that_read_event_times_are_recognised():
    assert reads_time_list(build_model("HSTU")) and reads_time_list(build_model("HyTRec"))
    assert not reads_time_list(build_model("HSTU", time_bias=False))
    assert not reads_time_list(build_model("HyenaRec"))


def write_timed_dataset(folder: str) -> dict[str, tuple[list[str], list[float]]]:
    """Histories at epoch seconds with gaps from seconds to weeks (float32 would round them)."""
    rng = random.Random(1)
    histories = {}
    for u in range(1, 21):
        time, items, times = 1.6e9 + rng.randint(0, 10**6), [], []
        for _ in range(rng.randint(4, 18)):
            time += rng.choice([1, 7, 45, 3600, 86400 * 9]) + rng.random()
            items.append(f"item-{rng.randint(1, N_ITEMS)}")
            times.append(time)
        histories[f"user-{u}"] = (items, times)
    os.makedirs(os.path.join(folder, "timed"), exist_ok=True)
    with open(os.path.join(folder, "timed", "timed.inter"), "w", encoding="utf-8") as file:
        file.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, (items, times) in histories.items():
            file.writelines(f"{user}\t{item}\t{time:.6f}\n" for item, time in zip(items, times))
    return histories


@pytest.fixture(scope="module", params=["HSTU", "HyTRec"])
def timed(request, tmp_path_factory):
    """An untrained time-aware model (its time parameters made large, so that times move its
    scores) on a data set with irregular gaps, its bundle and test batches."""
    folder = tmp_path_factory.mktemp("timed")
    histories = write_timed_dataset(str(folder))
    config_dict = {
        "data_path": str(folder),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": MAX_LEN,
        "hidden_size": 16,
        "use_gpu": False,
        "checkpoint_dir": str(folder / "saved"),
    }
    config = Config(model=request.param, dataset="timed", config_dict=config_dict)
    dataset = create_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = get_model(request.param)(config, dataset).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "time" in name or "gap" in name:
                parameter.normal_(std=2.0)
    bundle = ModelBundle.from_dataset(model, config, dataset)
    return {"model": model, "bundle": bundle, "test_data": test_data, "histories": histories}


def test_bundles_store_event_times_exactly(timed):
    bundle = timed["bundle"]
    assert bundle.has_times and bundle.history["times"].dtype == torch.float64
    for user, (items, times) in timed["histories"].items():
        user_id = bundle.user_ids[user]
        offsets = bundle.history["offsets"]
        stored = bundle.history["times"][offsets[user_id] : offsets[user_id + 1]]
        assert [bundle.item_tokens[i] for i in bundle.user_history(user_id)] == items
        torch.testing.assert_close(
            stored, torch.tensor(times, dtype=torch.float64), rtol=0, atol=1e-5
        )


def test_time_aware_models_rank_as_in_their_evaluation(timed, caplog):
    """The test batches' histories and times, through recommend_sequences, score as the
    model's own ``full_sort_predict``; without the times they do not (and a warning says so)."""
    model = timed["model"]
    recommender = Recommender(timed["bundle"], "cpu", batch_size=5, trim_padding=False)
    id_to_token = timed["bundle"].item_tokens
    time_field = recommender.time_seq_field
    assert time_field == model.TIME_SEQ
    max_difference = 0.0
    for interaction, *_ in timed["test_data"]:
        with torch.no_grad():
            scores = model.full_sort_predict(interaction)
        scores[:, 0] = -torch.inf
        top_scores, top_ids = torch.topk(scores, 5)
        lengths = interaction[model.ITEM_SEQ_LEN].tolist()
        sequences = [
            [id_to_token[i] for i in row[:n]]
            for row, n in zip(interaction[model.ITEM_SEQ].tolist(), lengths)
        ]
        times = [row[:n] for row, n in zip(interaction[time_field].tolist(), lengths)]
        results = recommender.recommend_sequences(sequences, 5, exclude_history=False, times=times)
        assert [r.items for r in results] == [
            [id_to_token[i] for i in row] for row in top_ids.tolist()
        ]
        torch.testing.assert_close(torch.tensor([r.scores for r in results]), top_scores)
        with caplog.at_level("WARNING"):
            untimed = recommender.recommend_sequences(sequences, 5, exclude_history=False)
        assert "reads event times" in caplog.text
        difference = torch.tensor([r.scores for r in untimed]) - top_scores
        max_difference = max(max_difference, float(difference.abs().max()))
    assert max_difference > 1e-3


def test_users_are_served_with_their_stored_times(timed):
    recommender = Recommender(timed["bundle"], "cpu", batch_size=6, trim_padding=False)
    histories = timed["histories"]
    by_user = recommender.recommend_users(list(histories), k=6)
    by_sequence = recommender.recommend_sequences(
        {user: items for user, (items, _) in histories.items()},
        k=6,
        times={user: times for user, (_, times) in histories.items()},
    )
    assert [(r.items, r.scores) for r in by_user] == [(r.items, r.scores) for r in by_sequence]


def test_times_go_through_the_command_line_and_bad_times_are_refused(timed, tmp_path):
    recommender = Recommender(timed["bundle"], "cpu", trim_padding=False)
    bundle_file = timed["bundle"].save(str(tmp_path / "timed.bundle.pt"))
    items, times = timed["histories"]["user-4"]
    expected = recommender.recommend_sequences([items], k=4, times=[times])[0].items
    for name, text in {
        "s.jsonl": json.dumps({"id": "a", "items": items, "times": times}) + "\n",
        "s.csv": "id,items,times\na," + " ".join(items) + "," + " ".join(map(repr, times)) + "\n",
    }.items():
        (tmp_path / name).write_text(text)
        output = str(tmp_path / "o.jsonl")
        main([bundle_file, "--sequences", str(tmp_path / name), "-k", "4", "--output", output])
        with open(output) as file:
            assert json.loads(file.readline())["items"] == expected

    with pytest.raises(ValueError, match="sequence a: 2 times for 3 items"):
        recommender.recommend_sequences({"a": items[:3]}, times={"a": times[:2]})
    with pytest.raises(ValueError, match=r"times are missing for sequence\(s\) \['b'\]"):
        recommender.recommend_sequences({"a": items[:1], "b": items[:1]}, times={"a": times[:1]})
    with pytest.raises(ValueError, match="sequence 0: times must be finite"):
        recommender.recommend_sequences([items[:1]], times=[[float("nan")]])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        json.dumps({"id": "a", "items": items[:1], "times": times[:1]})
        + "\n"
        + json.dumps({"id": "b", "items": items[:1]})
        + "\n"
    )
    with pytest.raises(ValueError, match="mixed.jsonl, line 2: either every sequence has 'times'"):
        read_sequences(str(mixed))

"""The dump converter: round trips, k-core against an in-memory reference, malformed inputs."""

from __future__ import annotations

import gzip
import os
import random

import pytest

from recbole_hyena.data.convert import INTER_HEADER, ConvertError, Counts, InputSpec, convert, main


def read_inter(path: str) -> list[tuple[str, str, str]]:
    with open(path, encoding="utf-8") as file:
        assert file.readline() == INTER_HEADER
        return [tuple(line.rstrip("\n").split("\t")) for line in file]


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def reference_k_core(pairs, user_core: int, item_core: int):
    """Iterated k-core on the whole list in memory: the obviously correct version."""
    while True:
        users, items = {}, {}
        for user, item in pairs:
            users[user] = users.get(user, 0) + 1
            items[item] = items.get(item, 0) + 1
        kept = [(u, i) for u, i in pairs if users[u] >= user_core and items[i] >= item_core]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


def test_lines_round_trip_positions_and_counts(tmp_path):
    # Users interleave; each user's lines are in time order, so position = per-user line count.
    source = write(tmp_path / "log.txt", "u1 a\nu2 b\nu1 b\n\nu2 c\nu1 a\nu3 a\n")
    target, before, after = convert(InputSpec(source, "lines"), str(tmp_path / "out"), "toy")

    assert target == str(tmp_path / "out" / "toy" / "toy.inter")
    assert before == after == Counts(users=3, items=3, interactions=6)
    assert read_inter(target) == [
        ("u1", "a", "0"),
        ("u2", "b", "0"),
        ("u1", "b", "1"),
        ("u2", "c", "1"),
        ("u1", "a", "2"),
        ("u3", "a", "0"),
    ]
    assert os.listdir(tmp_path / "out" / "toy") == ["toy.inter"]  # no temporary file left


def test_csv_named_columns_custom_separator_and_gzip(tmp_path):
    text = 'ts;visitor;sku;extra\n10;"v 1";x;q\n5.5;v2;y;q\n12;"v 1";"y";q\n'
    source = str(tmp_path / "log.csv.gz")
    with gzip.open(source, "wt", encoding="utf-8") as file:
        file.write(text)
    spec = InputSpec(source, "csv", sep=";", user_col="visitor", item_col="sku", time_col="ts")
    target, before, _ = convert(spec, str(tmp_path), "shop")

    assert before == Counts(users=2, items=2, interactions=3)
    # Tokens are kept as they are (quotes removed, inner space kept); timestamps verbatim.
    assert read_inter(target) == [("v 1", "x", "10"), ("v2", "y", "5.5"), ("v 1", "y", "12")]


def test_tsv_without_header_columns_by_number_and_no_time(tmp_path):
    source = write(tmp_path / "log.tsv", "x\tu1\ti1\nx\tu1\ti2\nx\tu2\ti1\n")
    spec = InputSpec(source, "tsv", user_col="1", item_col="2", time_col=None, header=False)
    target, _, _ = convert(spec, str(tmp_path), "t")
    assert read_inter(target) == [("u1", "i1", "0"), ("u1", "i2", "1"), ("u2", "i1", "0")]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_core_matches_in_memory_reference(tmp_path, seed):
    rng = random.Random(seed)
    # Skewed popularity so that filtering needs several rounds to settle.
    pairs = [(f"u{rng.randint(1, 40)}", f"i{int(rng.paretovariate(1.2)) % 60}") for _ in range(600)]
    source = write(tmp_path / "log.txt", "".join(f"{u} {i}\n" for u, i in pairs))
    target, before, after = convert(
        InputSpec(source, "lines"), str(tmp_path), "k", user_core=8, item_core=6
    )

    expected = reference_k_core(pairs, 8, 6)
    written = [(user, item) for user, item, _ in read_inter(target)]
    assert written == expected
    assert after == Counts(
        users=len({u for u, _ in expected}),
        items=len({i for _, i in expected}),
        interactions=len(expected),
    )
    assert before.interactions == 600 and after.interactions < 600
    users = [user for user, _ in written]
    assert min(users.count(user) for user in set(users)) >= 8


def test_k_core_needs_iteration(tmp_path):
    # c has 2 interactions and survives the first count; u2 has 1 and goes, which leaves c with
    # 1, so a second round must drop c as well.
    source = write(tmp_path / "log.txt", "u1 a\nu1 b\nu1 c\nu2 c\nu3 a\nu3 b\n")
    target, _, after = convert(
        InputSpec(source, "lines"), str(tmp_path), "k", user_core=2, item_core=2
    )
    assert after == Counts(users=2, items=2, interactions=4)
    assert read_inter(target) == [
        ("u1", "a", "0"),
        ("u1", "b", "1"),
        ("u3", "a", "0"),
        ("u3", "b", "1"),
    ]


@pytest.mark.parametrize(
    "fmt, text, line, message",
    [
        ("lines", "u1 a\nu1 b\nu2 a b\nu3 c\n", 3, "expected 'user item'"),
        ("lines", "u1 a\nu2\n", 2, "expected 'user item'"),
        ("lines", 'u1 a\nu1 "b\n', 2, "contains"),
        ("csv", "user_id,item_id,timestamp\nu,i,1\nu,i,yesterday\n", 3, "not a number"),
        ("csv", "user_id,item_id,timestamp\nu,i,1\nu,i\n", 3, "expected at least 3 columns"),
        ("csv", "user_id,item_id,timestamp\nu,,1\n", 2, "item '' is empty"),
    ],
)
def test_malformed_line_names_file_and_line_and_leaves_nothing(tmp_path, fmt, text, line, message):
    source = write(tmp_path / "bad.txt", text)
    out_dir = tmp_path / "out"
    with pytest.raises(ConvertError) as error:
        convert(InputSpec(source, fmt), str(out_dir), "bad")
    assert f"{source}, line {line}" in str(error.value)
    assert message in str(error.value)
    assert not out_dir.exists() or not any(out_dir.rglob("*"))


def test_missing_column_is_named(tmp_path):
    source = write(tmp_path / "log.csv", "user,item\nu,i\n")
    with pytest.raises(ConvertError, match="no column 'user_id'"):
        convert(InputSpec(source, "csv"), str(tmp_path), "x")


def test_failed_conversion_keeps_the_previous_output(tmp_path):
    good = write(tmp_path / "good.txt", "u1 a\n")
    target, _, _ = convert(InputSpec(good, "lines"), str(tmp_path), "d")
    bad = write(tmp_path / "bad.txt", "u1 a\nnope\n")
    with pytest.raises(ConvertError):
        convert(InputSpec(bad, "lines"), str(tmp_path), "d")
    assert read_inter(target) == [("u1", "a", "0")]
    assert os.listdir(tmp_path / "d") == ["d.inter"]


def test_command_line_prints_counts_and_recbole_loads_the_file(tmp_path, caplog):
    rng = random.Random(0)
    lines = []
    for user in range(1, 13):
        lines += [f"{user} {rng.randint(1, 9)}" for _ in range(rng.randint(3, 8))]
    source = write(tmp_path / "mini.txt", "\n".join(lines) + "\n")
    with caplog.at_level("INFO", logger="recbole_hyena.data.convert"):
        main([source, "--out_dir", str(tmp_path / "data"), "--k_core", "2"])
    n_items = len({line.split()[1] for line in lines})
    assert f"read:    12 users / {n_items} items / {len(lines)} interactions" in caplog.text
    assert "k-core:" in caplog.text

    from recbole.data import create_dataset

    from recbole_hyena.config import Config

    config = Config(
        model="HyenaRec",
        dataset="mini",
        config_dict={
            "data_path": str(tmp_path / "data"),
            "use_gpu": False,
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        },
    )
    dataset = create_dataset(config)
    written = read_inter(str(tmp_path / "data" / "mini" / "mini.inter"))
    assert dataset.inter_num == len(written)
    assert dataset.user_num - 1 == len({user for user, _, _ in written})  # id 0 is padding


def test_command_line_reports_errors_without_traceback(tmp_path, capsys):
    source = write(tmp_path / "bad.txt", "u1 a\nu1 a b\n")
    with pytest.raises(SystemExit) as exit_info:
        main([source, "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "line 2" in capsys.readouterr().err

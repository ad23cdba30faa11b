"""Pruned searches: a member stopped mid-stack leaves the others as they were, the stack sheds its row,
a pruned trial's folder says when and why, a search killed between a trial's seeds resumes to the same decisions, and
the report's parameter importance and parallel coordinates."""

import csv
import json
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest
import torch

from mnistlab.cli import main
from mnistlab.evaluation import search
from mnistlab.results import SweepResults
from mnistlab.spec import Architecture
from mnistlab.spec import Hyperparameters as Member
from mnistlab.train.engine import Engine
from mnistlab.train.fit import Lockstep, fit
from mnistlab.train.protocol import streams

SMALL = Architecture(784, (32, 16))
EAGER = Engine(compile=False)
FAST = ["--no-compile", "--quiet"]


def _data(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=generator), torch.randint(0, 10, (n,), generator=generator)


MEMBERS = [
    Member(seed=0, learning_rate=1e-3, epochs=5, input_dropout=0.1, dropout=0.2),
    Member(seed=1, learning_rate=3e-3, epochs=5, l2=1e-3, dropout=0.3),
    Member(seed=2, learning_rate=1e-4, epochs=5, l1=1e-4),
]


def _fit(judge=None, engine=EAGER):
    train, evaluation = _data(320, seed=1), _data(200, seed=2)  # an evaluation of one chunk at any stack size
    return fit(SMALL, MEMBERS, [streams(m, 1) for m in MEMBERS], train, evaluation, 32, engine, judge=judge)


def _prune_second_after_epoch_two(epoch: int, losses: dict[int, float]) -> dict[int, str]:
    return {1: "a test's judge"} if epoch == 2 and 1 in losses else {}


def _numbers(history) -> list[tuple]:
    """An epoch's numbers without its wall time."""
    return [(e.epoch, e.loss, e.accuracy, e.eval_loss, e.eval_accuracy) for e in history]


def test_a_member_pruned_mid_stack_leaves_the_others_bit_for_bit():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a sum splits the same way whatever the stack's size
    try:
        whole, pruned = _fit(), _fit(_prune_second_after_epoch_two)
    finally:
        torch.set_num_threads(threads)
    for member in (0, 2):
        assert _numbers(pruned[member].history) == _numbers(whole[member].history)
        assert torch.equal(pruned[member].params, whole[member].params)
        assert pruned[member].pruned is None
    assert pruned[1].pruned == "a test's judge" and pruned[1].epochs == 2
    assert _numbers(pruned[1].history) == _numbers(whole[1].history[:2])


def test_a_last_survivor_keeps_its_bits_on_every_thread():
    # A stack of one row splits its sums among threads as no larger stack does: a stack sheds to two.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        whole, pruned = _fit(), _fit(lambda epoch, losses: {m: "stopped" for m in (0, 1) if m in losses and epoch == 2})
    finally:
        torch.set_num_threads(threads)
    assert [f.pruned for f in pruned] == ["stopped", "stopped", None]
    assert _numbers(pruned[2].history) == _numbers(whole[2].history)
    assert torch.equal(pruned[2].params, whole[2].params)


def test_shedding_a_pruned_row_frees_its_work():
    steps = 320 // 32
    whole, pruned = _fit(), _fit(_prune_second_after_epoch_two)
    assert [f.row_steps for f in whole] == [5 * steps] * 3
    assert [f.row_steps for f in pruned] == [5 * steps, 2 * steps, 5 * steps]
    assert sum(f.row_steps for f in pruned) == (3 * 2 + 2 * 3) * steps  # member-steps: 36 of 45 epochs' worth


def test_a_stack_sheds_to_a_power_of_two_only_where_it_pays():
    train, four = _data(320, seed=1), [*MEMBERS, Member(seed=3, learning_rate=1e-3, epochs=5)]

    def stack(engine: Engine, members=MEMBERS) -> Lockstep:
        return Lockstep(SMALL, members, [streams(m, 1) for m in members], train, 32, engine)

    assert stack(EAGER).shed([0, 2], epoch_seconds=0.01, epochs_left=1) == [0, 2]  # eager: shedding is free
    assert stack(EAGER, four).shed([0, 1, 3], epoch_seconds=1.0, epochs_left=10) is None  # 3 rows: still 4
    assert stack(EAGER, four).shed([3], epoch_seconds=1.0, epochs_left=10) == [0, 3]  # never below two rows
    assert stack(EAGER, MEMBERS[:2]).shed([1], epoch_seconds=1.0, epochs_left=10) is None
    compiled = Engine(compile=True, compile_seconds=30)
    assert stack(compiled).shed([0, 2], epoch_seconds=1.0, epochs_left=10) is None  # 3.3 s saved < 15 s
    shed = stack(compiled)
    assert shed.shed([2], epoch_seconds=10.0, epochs_left=10) == [0, 2] and len(shed.state.keys) == 2
    assert shed.members == [MEMBERS[0], MEMBERS[2]] and shed.state.reg.l1.tolist() == pytest.approx([0, 1e-4])


def _search_file(folder: Path, storage: str = "", trials: int = 8) -> Path:
    """A pruned search of the provided model's learning rate (over five decades: the slow end is pruned)
    and L2 factor, `trials` trials of 4 epochs."""
    folder.mkdir(exist_ok=True)
    path = folder / "lr-search.toml"
    path.write_text(
        'description = "learning rate of the provided model"\nbase = "provided"\n'
        'set = ["train.epochs=4", "train.batch_size=1000"]\n'
        f'[search]\nmethod = "optuna"\ntrials = {trials}\nseed = 3\npruner = "asha"\nreduction_factor = 2\n{storage}'
        '[[axis]]\nkey = "train.learning_rate"\nlog_uniform = [1e-6, 1e-1]\n'
        '[[axis]]\nkey = "model.l2"\nlog_uniform = [1e-7, 1e-3]\n'
    )
    return path


def _table(folder: Path) -> list[dict]:
    with open(folder / "sweep.csv") as f:
        return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in csv.DictReader(f)]


def test_a_pruned_search_writes_why_and_repeats_itself(tmp_path, data_env, capsys):
    path = _search_file(tmp_path)
    out = tmp_path / "asha"
    assert main(["sweep", str(path), "--seeds", "2", "--out", str(out), *FAST]) == 0
    rows = _table(out)
    assert len(rows) == 16  # 8 trials x 2 seeds
    pruned = [row for row in rows if row["pruned"] == "True"]
    assert 0 < len(pruned) < len(rows)
    for row in pruned:
        found = json.loads((out / row["point"] / f"seed-{row['seed']}" / "pruned.json").read_text())
        assert found["pruned_after_epoch"] == int(row["epochs"]) < 4
        assert found["reason"].startswith("ASHA: mean validation loss")
        assert found["pruner"] == "asha (from epoch 1, reduction factor 2)"
        assert row["test_loss"] == "" and float(row["validation_loss"]) == pytest.approx(
            found["validation"]["loss"], rel=1e-5
        )
        assert not (out / row["point"] / f"seed-{row['seed']}" / "model.safetensors").exists()
    for row in rows:  # a trial's seeds are pruned together
        assert row["pruned"] == next(r["pruned"] for r in rows if r["point"] == row["point"])

    html = unescape((out / "report.html").read_text())
    trials_pruned = len({row["point"] for row in pruned})
    assert f"stopped {trials_pruned} of the 8 points trained" in html
    assert "parallel coordinates" in html
    # 8 points, most of them pruned: importance falls back to every point's loss at the first epoch all reached
    first = min(int(row["epochs"]) for row in rows)
    assert f"every point's mean validation loss after epoch {first}, which all of them reached" in html
    shares = dict(SweepResults(out).importance())
    assert set(shares) == {"train.learning_rate", "model.l2"} and sum(shares.values()) == pytest.approx(1.0)

    again = tmp_path / "again"
    assert main(["sweep", str(path), "--seeds", "2", "--out", str(again), *FAST]) == 0
    assert _table(again) == rows

    capsys.readouterr()
    assert main(["sweep", str(path), "--seeds", "2", "--out", str(out), "--no-compile"]) == 0
    said = capsys.readouterr().out
    assert "runs already finished" in said and "in lockstep" not in said  # pruned runs count as done
    assert _table(out) == rows


def _sweep_command(path: Path, out: Path, dies: str = "") -> list[str]:
    """The search in a process of its own: every one starts as a user's does (this process's threads have
    run other tests' work before denormals were flushed, and may round such numbers differently). `dies`:
    Python run first, in that process."""
    run = f"{dies}\nfrom mnistlab.cli import main\nraise SystemExit(main({_arguments(path, out)!r}))"
    return [sys.executable, "-c", run]


def _arguments(path: Path, out: Path) -> list[str]:
    return ["sweep", str(path), "--seeds", "2", "--out", str(out), "--no-compile"]


# The process ends as a kill would, at the worst moment: one seed of a pruned trial written, the other not.
DIES_BETWEEN_SEEDS = """
import os
from mnistlab.studies import execute
write_pruned = execute.write_pruned
def write_and_die(*args):
    write_pruned(*args)
    os._exit(137)
execute.write_pruned = write_and_die
"""


def test_a_search_killed_between_a_trials_seeds_resumes_to_the_same_decisions(tmp_path, data_env):
    reference = tmp_path / "reference"
    plain = _search_file(tmp_path / "plain", trials=4)
    subprocess.run(_sweep_command(plain, reference), check=True, stdout=subprocess.DEVNULL)

    database = tmp_path / "search.db"
    path = _search_file(tmp_path / "stored", storage=f'storage = "sqlite:///{database}"\n', trials=4)
    out = tmp_path / "killed"
    killed = subprocess.run(_sweep_command(path, out, dies=DIES_BETWEEN_SEEDS), stdout=subprocess.DEVNULL)
    assert killed.returncode == 137
    written = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/*.json")}
    assert len(list(out.glob("*/seed-*/pruned.json"))) == 1  # a trial half written

    resumed = subprocess.run(_sweep_command(path, out), check=True, capture_output=True, text=True)
    assert _table(out) == _table(reference)  # the draws and the pruner's decisions of an uninterrupted search
    assert "the round trains again from its start" in resumed.stdout
    assert {p: p.stat().st_mtime_ns for p in written} == written  # what the killed search wrote stands

    import optuna

    study = optuna.load_study(study_name="lr-search", storage=f"sqlite:///{database}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and "RUNNING" not in states
    assert states.count("PRUNED") == len({r["point"] for r in _table(out) if r["pruned"] == "True"})


def _trials(count: int = 40) -> list[search.SearchTrial]:
    """A search where the learning rate matters most, dropout a little, L1 not at all, epochs never vary."""
    import numpy as np

    rng = np.random.default_rng(0)
    trials = []
    for index in range(count):
        lr, dropout, l1 = 10 ** rng.uniform(-5, -1), rng.uniform(0, 0.5), 10 ** rng.uniform(-12, -11)
        loss = 0.1 + (np.log10(lr) + 3) ** 2 / 4 + 0.3 * dropout + rng.normal(0, 0.005)
        params = {"train.learning_rate": lr, "model.dropout": dropout, "model.l1": l1, "train.epochs": 5}
        trials.append(search.SearchTrial(params, float(loss), pruned=index % 5 == 4))
    return trials


def test_importance_ranks_a_useless_parameter_last_and_the_figure_shows_what_varied():
    trials = _trials()
    drawn = {"train.learning_rate": True, "model.dropout": False, "model.l1": True}
    parameters = search.varying(trials, drawn)
    assert [(p.name, p.log) for p in parameters] == [("learning_rate", True), ("dropout", False), ("l1", True)]
    assert [p.log for p in search.varying(trials)] == [True, True, False]  # not drawn: by the span of the values
    shares = search.importance(parameters, trials)
    assert [key for key, _ in shares] == ["train.learning_rate", "model.dropout", "model.l1"]
    assert sum(share for _, share in shares) == pytest.approx(1.0) and shares[-1][1] < 0.05

    fig = search.parallel_coordinates(parameters, trials, "a search")
    labels = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert labels[:3] == ["learning_rate (log)", "dropout", "l1 (log)"] and labels[3].startswith("validation loss")
    legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    completed = sum(not t.pruned for t in trials)
    assert legend[0] == f"best {-(-completed // 10)} of {completed} completed"
    assert legend[-1] == f"{len(trials) - completed} pruned" and completed < len(trials)

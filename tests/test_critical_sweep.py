"""mgpu_lab.measure.critical_sweep: steps to a target per batch, the noise scale beside, and
the committed data/critical_batch.json (its provenance and its consistency with the fit)."""
import math

import numpy as np
import pytest

from mgpu_lab.cli import main
from mgpu_lab.data import load_digits, train_test_split
from mgpu_lab.measure import critical_sweep as cs
from mgpu_lab.optim import SGD
from mgpu_lab.predict.batch_scaling import fit_tradeoff
from mgpu_lab.presets import digits_model
from mgpu_lab.trainer import DataParallelTrainer, batch_indices

TINY = dict(batch_sizes=(8, 64, 512), lr_grid=(0.4, 0.8), seeds=(0, 1), target=0.5, budget=300)


@pytest.fixture(scope="module")
def tiny():
    """A sweep of seconds: three batches, two rates, two seeds, a loose target."""
    return cs.run(progress=False, **TINY)


class _FakeRunner:
    """Steps to target as a known function of (lr, seed): no Theano."""

    def __init__(self, steps):
        self.steps, self.calls = steps, []

    def train(self, batch, lr, seed, cap, budget, noise_beta):
        self.calls.append((lr, seed, cap))
        s = self.steps(lr, seed)
        if s is None or s > cap:
            return {"steps": None, "outcome": "diverged" if s is None else
                    ("budget" if cap >= budget else "cut")}
        return {"steps": s, "outcome": "reached"}


class _Bar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


def test_tuning_cuts_only_runs_that_cannot_win():
    """The cut never changes the answer: the best rate is the brute-force argmin of the
    steps summed over seeds, and every cut run would have lost."""
    table = {3.2: None, 1.6: (40, 90), 0.8: (50, 45), 0.4: (90, 80), 0.2: (300, 200)}
    runner = _FakeRunner(lambda lr, seed: None if table[lr] is None else table[lr][seed])
    cfg = dict(cs.DEFAULTS, lr_grid=list(table), seeds=[0, 1], budget=1000)
    runs, best = cs._tune(runner, 64, cfg, _Bar())
    assert best == 0.8  # 95 steps in all, against 130, 170 and 500
    # 0.4: seed 0 takes 90 of the 95, so seed 1 may take 5 (it needs 80); 0.2: 300 > 95
    cut = [(r["lr"], r["seed"]) for r in runs if r["outcome"] == "cut"]
    assert cut == [(0.4, 1), (0.2, 0)]
    assert [c[2] for c in runner.calls] == [1000, 1000, 1000, 130, 80, 95, 5, 95]
    assert len(runs) == 8  # 3.2's seed 1 and 0.2's seed 1 never ran


def test_a_sweep_reaches_the_target_at_every_batch(tiny):
    assert [r["batch"] for r in tiny["rows"]] == [8, 64, 512]
    for r in tiny["rows"]:
        assert r["lr"] in TINY["lr_grid"] and len(r["steps_by_seed"]) == 2
        assert r["steps"] == pytest.approx(np.mean(r["steps_by_seed"]))
        assert r["samples"] == pytest.approx(r["batch"] * r["steps"])
        assert 0 < r["b_simple"] < 1e4 and math.isfinite(r["b_simple"])
    steps = [r["steps"] for r in tiny["rows"]]
    assert steps[0] > steps[1] > steps[2]  # larger batches: fewer steps...
    samples = [r["samples"] for r in tiny["rows"]]
    assert samples[0] < samples[1] < samples[2]  # ...but more samples


def test_the_tuned_rate_is_the_fastest_of_the_grid(tiny):
    for row in tiny["rows"]:
        totals = {}
        for lr in TINY["lr_grid"]:
            runs = [r for r in tiny["runs"] if r["rule"] == "grid" and r["batch"] == row["batch"]
                    and r["lr"] == lr]
            if len(runs) == 2 and all(r["outcome"] == "reached" for r in runs):
                totals[lr] = sum(r["steps"] for r in runs)
        assert row["lr"] == min(totals, key=lambda lr: (totals[lr], -lr))


def test_the_linear_rule_is_anchored_at_the_smallest_batch(tiny):
    rule = tiny["linear_rule"]
    assert rule["anchor_batch"] == 8 and rule["anchor_lr"] == tiny["rows"][0]["lr"]
    for r in tiny["rows"]:
        assert r["lr_linear_rule"] == pytest.approx(rule["anchor_lr"] * r["batch"] / 8)
        assert len(r["linear_rule_outcomes"]) == 2
    assert tiny["rows"][0]["steps_linear_rule"] == tiny["rows"][0]["steps"]  # B0: the same runs


def test_a_run_matches_the_trainer_step_for_step(tiny):
    """The sweep's runner against the library's DataParallelTrainer (serial, 2 devices):
    the same steps to the target, and the trainer's own noise-scale average at that step."""
    row = tiny["rows"][1]
    run = next(r for r in tiny["runs"] if r["rule"] == "grid" and r["batch"] == row["batch"]
               and r["lr"] == row["lr"] and r["seed"] == 1)
    x, y = load_digits(flat=True)
    (xt, yt), (xv, yv) = train_test_split(x, y, seed=0)
    with DataParallelTrainer(digits_model("mlp", seed=1), 2, SGD(row["lr"]), engine="serial",
                             noise_beta=cs.DEFAULTS["noise_beta"]) as tr:
        for step in range(run["steps"]):
            idx = batch_indices(step, len(xt), row["batch"], 1)
            tr.step(xt[idx], yt[idx])
            if tr.evaluate(xv, yv)[0] <= TINY["target"]:
                break
        assert tr.step_count == run["steps"]
        assert tr.history[-1]["b_simple"] == pytest.approx(run["b_simple_end"], rel=1e-6)


def test_the_fit_is_stored_and_a_failed_fit_is_said():
    rows = [{"batch": b, "steps": s} for b, s in [(8, 200.0), (64, 70.0), (512, 60.0)]]
    fit = cs._fit(rows)
    assert fit["b_crit"] == pytest.approx(fit_tradeoff([8, 64, 512], [200, 70, 60]).b_crit)
    assert rows[0]["steps_fit"] == pytest.approx(fit["s_min"] * (1 + fit["b_crit"] / 8))
    assert "at least 3 points" in cs._fit(rows[:2])["error"]


@pytest.mark.parametrize("settings, match", [
    (dict(batch_sizes=(1, 8)), "at least one sample per device"),
    (dict(n_devices=1, batch_sizes=(8,)), "two batch sizes"),
    (dict(lr_grid=(0.1, -0.2)), "positive learning rates"),
    (dict(seeds=()), "at least one seed"),
    (dict(target=0.0), "target must be"),
    (dict(batch_sizes=(8, 2048)), "larger than the 1438 training images"),
    (dict(momentum=0.9), "unknown setting"),
])
def test_bad_settings_are_refused_before_any_training(settings, match):
    with pytest.raises(ValueError, match=match):
        cs.run(progress=False, **settings)


def test_the_command_writes_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cs.DEFAULTS, "lr_grid", (0.8,))  # one rate: seconds, not minutes
    out = tmp_path / "sweep.json"
    assert main(["critical-sweep", "--batch", "256,512,1024", "--seeds", "0", "--target",
                 "0.5", "--budget", "100", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "B_crit" in text or "no fit" in text
    assert max(len(line) for line in text.splitlines()) <= 88
    saved = cs.load(out)
    assert saved["batch_sizes"] == [256, 512, 1024] and saved["lr_grid"] == [0.8]
    with pytest.raises(SystemExit) as e:
        main(["critical-sweep", "--batch", "1,8", "--no-progress", "--out", str(out)])
    assert e.value.code == 2 and "one sample per device" in capsys.readouterr().err


# -- the committed measurement ----------------------------------------------------------
@pytest.fixture(scope="module")
def saved():
    return cs.load()


def test_the_data_file_says_where_it_came_from(saved):
    for key in ("created", "machine", "machine_label", "library_hash", "command", "seconds",
                "seeds", "lr_grid", "batch_sizes", "target", "model", "optimizer", "budget",
                "n_devices", "data", "linear_rule"):
        assert key in saved, key
    for key in ("cpu", "cores", "python", "numpy", "theano"):
        assert saved["machine"][key], key
    assert saved["kind"] == "measured" and saved["command"] == cs.COMMAND
    assert saved["target"]["metric"] == "validation loss" and saved["target"]["value"] > 0
    assert len(saved["library_hash"]) == 64 and len(saved["seeds"]) >= 2


def test_the_data_file_agrees_with_the_fit_function(saved):
    done = [r for r in saved["rows"] if r["steps"] is not None]
    fit = fit_tradeoff([r["batch"] for r in done], [r["steps"] for r in done])
    assert saved["fit"]["b_crit"] == pytest.approx(fit.b_crit, rel=1e-9)
    assert saved["fit"]["s_min"] == pytest.approx(fit.s_min, rel=1e-9)
    assert saved["fit"]["e_min"] == pytest.approx(fit.e_min, rel=1e-9)
    for r in done:
        assert r["steps"] == pytest.approx(np.mean(r["steps_by_seed"]))
        assert r["samples"] == pytest.approx(r["batch"] * r["steps"])
        assert r["lr"] in saved["lr_grid"]
    biggest = max(r["batch"] for r in done)
    assert saved["b_noise_batch"] == biggest
    assert saved["b_noise"] == next(r["b_simple"] for r in done if r["batch"] == biggest)


def test_the_data_file_holds_every_run_behind_its_rows(saved):
    for row in saved["rows"]:
        grid = [r for r in saved["runs"] if r["rule"] == "grid" and r["batch"] == row["batch"]
                and r["lr"] == row["lr"]]
        assert sorted(r["steps"] for r in grid) == sorted(row["steps_by_seed"])
        rule = [r for r in saved["runs"] if r["rule"] == "linear" and r["batch"] == row["batch"]]
        assert [r["outcome"] for r in rule] == row["linear_rule_outcomes"]

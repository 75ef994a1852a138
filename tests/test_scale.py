"""Scaling laws: the fits against known laws, the sweep against the trainer's own counts, resuming, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit.cli import main
from llmkit.config import ModelConfig
from llmkit.data.builtin import python_docs_texts
from llmkit.data.shards import tokenize_corpus
from llmkit.data.tokenizer_train import train_tokenizer
from llmkit.errors import LlmkitError
from llmkit.models import build_model
from llmkit.plan.compute import CHINCHILLA_FIT
from llmkit.scale import fit as scale_fit
from llmkit.scale import grid, sweep
from llmkit.scale.fit import Law, approach2, fit_law, start_grid
from llmkit.scale.plots import write_plots
from llmkit.scale.report import fit_results, render
from llmkit.scale.results import Result, append_result, read_results
from llmkit.train import loop
from llmkit.train.optim import lr_at
from llmkit.train.step import flops_per_token

ROOT = Path(__file__).resolve().parents[1]
CHINCHILLA = Law(**CHINCHILLA_FIT)


# ---- the fits on synthetic points -------------------------------------------------------------
BUDGETS = np.geomspace(6e18, 3e21, 8)  # Chinchilla's IsoFLOP budgets ran from 6e18 to 3e21


def chinchilla_points(noise: float, seed: int = 0, budgets=BUDGETS, sizes: int = 9):
    """IsoFLOP points of Chinchilla's published law: per budget, sizes from N_opt/8 to 8 N_opt with
    D = C / 6N, the loss times exp(normal(0, noise))."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt, _ = CHINCHILLA.optimal(c)
        for n in n_opt * np.geomspace(1 / 8, 8, sizes):
            d = c / (6 * n)
            rows.append((c, n, d, float(CHINCHILLA.loss(n, d)) * math.exp(rng.normal(0, noise))))
    return [np.array(column) for column in zip(*rows, strict=True)]


@pytest.mark.parametrize("seed", [0, 1])
def test_approach3_recovers_chinchillas_parameters_from_noisy_points(seed):
    """72 points of L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28 with 0.1% multiplicative noise: every fitted
    parameter within 5% of the law that made them."""
    _, n, d, loss = chinchilla_points(noise=0.001, seed=seed)
    law = fit_law(n, d, loss)
    for name, true in CHINCHILLA_FIT.items():
        assert getattr(law, name) == pytest.approx(true, rel=0.05), (name, law)


def test_approach3_objective_is_the_huber_loss_of_log_residuals_and_its_gradient_is_exact():
    """The objective against a plain evaluation of its definition, and its gradient against finite differences."""
    _, n, d, loss = chinchilla_points(noise=0.01, sizes=3)
    args = (np.log(n), np.log(d), np.log(loss), 1e-3)
    theta = np.array([5.5, 6.1, 0.4, 0.3, 0.25])
    value, grad = scale_fit._objective(theta, *args)
    law = Law.from_theta(theta)
    r = np.log(law.loss(n, d)) - np.log(loss)
    huber = np.where(np.abs(r) <= 1e-3, 0.5 * r**2, 1e-3 * (np.abs(r) - 0.5e-3))
    assert value == pytest.approx(huber.sum(), rel=1e-10)
    for i in range(5):
        step = np.zeros(5)
        step[i] = 1e-6
        numeric = (scale_fit._objective(theta + step, *args)[0] - scale_fit._objective(theta - step, *args)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    assert scale_fit._grid_objectives(theta[None], *args)[0] == pytest.approx(value, rel=1e-10)
    assert start_grid().shape == (6 * 6 * 5 * 5 * 5, 5)  # Hoffmann et al.'s grid of initialisations


def test_law_optimum_is_the_minimum_along_the_isoflop_line():
    """The closed form N_opt = G (C/6)^a against a numerical search of L(N, C/6N)."""
    law = Law(E=2.1, A=80.0, B=300.0, alpha=0.4, beta=0.3)
    for c in (1e12, 1e15, 1e18):
        n, d = law.optimal(c)
        grid_n = np.geomspace(n / 100, n * 100, 200_001)
        best = grid_n[np.argmin(law.loss(grid_n, c / (6 * grid_n)))]
        assert n == pytest.approx(best, rel=1e-3) and d == pytest.approx(c / (6 * n))
    assert law.a == pytest.approx(0.3 / 0.7) and law.b == pytest.approx(0.4 / 0.7)


def test_approach2_recovers_a_and_b_from_synthetic_parabolas():
    """Per budget a parabola in ln N with its vertex at N* = 0.3 C^0.46 (so D* = C / 6N* ~ C^0.54), noise
    1e-4: the fitted minima and exponents."""
    rng = np.random.default_rng(0)
    budgets, n, d, loss = [], [], [], []
    for c in np.geomspace(1e13, 1e16, 5):
        n_star = 0.3 * c**0.46
        for size in n_star * np.geomspace(0.2, 4, 7):  # off-centre on purpose
            budgets.append(c)
            n.append(size)
            d.append(c / (6 * size))
            loss.append(2.0 + 10 / c**0.05 + 0.08 * math.log(size / n_star) ** 2 + rng.normal(0, 1e-4))
    a2 = approach2(budgets, n, d, loss)
    assert len(a2.curves) == 5 and not a2.skipped
    assert a2.n_law.exponent == pytest.approx(0.46, abs=0.01)
    assert a2.d_law.exponent == pytest.approx(0.54, abs=0.01)
    for curve in a2.curves:
        assert curve.n_opt == pytest.approx(0.3 * curve.budget**0.46, rel=0.05) and curve.inside


def test_approach2_skips_budgets_without_a_minimum():
    budgets, n, d = [1e13] * 3 + [1e14] * 2, [1, 2, 3, 1, 2], [1, 1, 1, 1, 1]
    a2 = approach2(budgets, n, d, [3.0, 2.0, 1.0, 2.0, 1.0])  # falling loss: no vertex; 2 sizes: no parabola
    assert a2.curves == [] and a2.n_law is None
    whys = [why for _, why in a2.skipped]
    assert whys[0].startswith("the loss has no minimum") and whys[1] == "2 size(s): a parabola needs 3"


def test_report_bootstrap_intervals_contain_the_estimate_and_text_names_both_laws(tmp_path):
    c, n, d, loss = chinchilla_points(noise=0.002, budgets=np.geomspace(6e18, 3e21, 5), sizes=7)
    results = [Result(f"p{i}", *row) for i, row in enumerate(zip(c, n, d, c, loss, strict=True))]
    fit = fit_results(results, "synthetic", budgets=[5.76e23], predict=[(70e9, 1.4e12)], bootstrap=12)
    assert len(fit.laws) == 12
    for name, (value, (low, high)) in fit.law_figures().items():
        assert low <= value <= high, name
    n_opt, n_ci = fit.optimal3(5.76e23)["params"]
    assert n_ci[0] <= n_opt <= n_ci[1] and n_opt == pytest.approx(CHINCHILLA.optimal(5.76e23)[0], rel=0.3)
    text = render(fit)
    assert "approach 2" in text and "approach 3" in text and "Chinchilla" in text and "tokens per parameter" in text
    report = fit.to_dict()
    assert report["approach3"]["alpha"]["interval"] and report["compute_optimal"][0]["approach2"]["params"] > 0
    assert report["predictions"][0]["loss"]["value"] == pytest.approx(float(fit.law.loss(70e9, 1.4e12)))
    paths = write_plots(fit, tmp_path / "plots", held_out=[(4e21, 2.0, "held out")])
    assert [p.name for p in paths] == ["isoflop.png", "optimal.png", "frontier.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


# ---- results files ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,message",
    [
        ("", "no results in the file"),
        ("{nope\n", ":1: not valid JSON"),
        ('{"params": 1, "tokens": 2, "flops": 3, "budget": 3, "val_loss": 4}\n[1, 2]\n', ":2: not a JSON object"),
        ('{"params": 1, "tokens": 2, "flops": 3, "val_loss": 4}\n', ":1: missing budget"),
        ('{"params": -1, "tokens": 2, "flops": 3, "budget": 3, "val_loss": 4}\n', "params=-1 must be > 0"),
        ('{"params": 1, "tokens": 2, "flops": 3, "budget": 3, "val_loss": NaN}\n', "val_loss=nan is not a finite"),
    ],
)
def test_bad_results_files_are_one_line_errors(content, message, tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text(content)
    assert main(["scale", "fit", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert main(["plan", "--flops", "1e18", "--law", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_fit_needs_five_points_and_plan_law_needs_flops(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    for i in range(4):
        append_result(path, Result(f"p{i}", 1e12, 1e5 * (i + 1), 1e6, 6e11, 3.0 - 0.1 * i))
    assert len(read_results(path)) == 4 and path.read_text().count("\n") == 4
    assert main(["scale", "fit", str(path)]) == 2
    assert "needs at least 5" in capsys.readouterr().err
    assert main(["plan", "gpt2", "--law", str(path)]) == 2
    assert "--law gives the compute-optimal size for a budget: it needs --flops C" in capsys.readouterr().err
    assert main(["scale", "fit", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such results file" in capsys.readouterr().err
    assert main(["scale", "fit", str(path), "--predict", "5M"]) == 2
    assert "is not N,D" in capsys.readouterr().err


def test_eta_is_flops_left_at_the_rate_so_far():
    assert sweep.eta_seconds(3e12, 1e12, 10.0) == pytest.approx(30.0)
    assert sweep.eta_seconds(1e12, 0.0, 5.0) is None
    progress = sweep.Progress(total_flops=4e12, done_flops=1e12, points=4, points_done=1, start=0.0)
    line = progress.finished(Result("p", 1e12, 1e5, 1e6, 1e12, 3.0, {"seconds": 2.0}))
    assert line.startswith("[2/4] p:") and "50% of the FLOPs done" in line and "ETA" in line


# ---- shapes and the grid ----------------------------------------------------------------------
BASE = ModelConfig.from_name("tiny-llama-10m", n_layer=2, d_model=32, n_head=2, n_kv_head=1, d_ff=88,
                             vocab_size=320, max_seq_len=32)  # fmt: skip


def test_shapes_keep_head_dim_group_depth_ratio_and_mlp_ratio():
    shape = grid.shape_for(BASE, 96)
    assert (shape.d_model, shape.n_layer, shape.head_dim, shape.n_head, shape.n_kv_head) == (96, 6, 16, 6, 3)
    assert shape.d_ff == 264 and shape.d_ff % 8 == 0  # 88 / 32 x 96
    assert grid.shape_for(BASE, 48, layers=1).n_layer == 1
    three = grid.shape_for(BASE.replace(n_head=2, n_kv_head=1, d_model=32, head_dim=None), 48)  # 3 heads, groups of 2
    assert (three.n_head, three.n_kv_head) == (3, 1)
    with pytest.raises(LlmkitError, match="width 40 is not a multiple of the base model's head_dim 16"):
        grid.shape_for(BASE, 40)
    matmul, total, fpt = grid.count_model(shape, 32)
    built = build_model(shape)
    assert total == sum(p.numel() for p in built.parameters())
    assert fpt == flops_per_token(built, shape, 32) == 6 * matmul + 12 * shape.n_layer * shape.d_model * 32


def _plan(rules: dict, batch_size: int = 8):
    """The points of BASE (32 wide, head_dim 16, vocabulary 320) under a [sweep] table, block 16."""
    from llmkit.config import TrainConfig

    train = TrainConfig(batch_size=batch_size, block_size=16, lr=3e-3, min_lr=3e-4)
    return grid.plan_points(BASE, train, grid.SweepConfig(**rules))


def test_lr_width_exponent_scales_each_points_lr_and_min_lr_with_its_width():
    """lr and min_lr x (32 / width)^p, 32 the base's width: p = 1 is muP's 1/width; the default 0 keeps one lr."""
    widths = [16, 32, 64]
    for p, factors in ((1.0, [2.0, 1.0, 0.5]), (0.5, [2**0.5, 1.0, 0.5**0.5]), (0.0, [1.0, 1.0, 1.0])):
        rules = {"budgets": [1e10], "widths": widths} | ({"lr_width_exponent": p} if p else {})
        points, _ = _plan(rules)
        assert [pt.model.d_model for pt in points] == widths
        assert [pt.train.lr for pt in points] == pytest.approx([3e-3 * f for f in factors], rel=1e-12)
        assert [pt.train.min_lr for pt in points] == pytest.approx([3e-4 * f for f in factors], rel=1e-12)


def test_sizes_per_budget_keeps_each_budgets_sizes_around_tokens_per_param():
    """sizes_per_budget 3: per budget, the 3 widths whose D/N is nearest tokens_per_param in log; they
    move to larger models as the budget grows, so each budget's minimum can sit among its sizes."""
    widths = [16, 32, 48, 64, 80, 96]
    budgets = [3e9, 3e11]
    every, _ = _plan({"budgets": budgets, "widths": widths, "min_steps": 1})
    chosen, _ = _plan({"budgets": budgets, "widths": widths, "min_steps": 1, "sizes_per_budget": 3,
                       "tokens_per_param": 20})  # fmt: skip
    picked = {}
    for budget in budgets:
        mine = [pt for pt in every if pt.budget == budget]
        assert len(mine) == len(widths)
        distance = {pt.name: abs(math.log(budget / (pt.flops_per_token * pt.params) / 20)) for pt in mine}
        want = sorted(distance, key=distance.get)[:3]
        got = [pt for pt in chosen if pt.budget == budget]
        assert sorted(pt.name for pt in got) == sorted(want)
        assert [pt.params for pt in got] == sorted(pt.params for pt in got)  # smallest model first
        picked[budget] = [pt.model.d_model for pt in got]
    assert picked[3e9] != picked[3e11] and max(picked[3e11]) > max(picked[3e9])
    for key, value in (("sizes_per_budget", -1), ("tokens_per_param", 0), ("lr_width_exponent", "1"),
                       ("target_steps", 1.5)):  # fmt: skip
        with pytest.raises(LlmkitError, match=f"\\[sweep\\] {key}="):
            grid.SweepConfig(budgets=[1e9], widths=[32], **{key: value})


def test_target_steps_halves_the_batch_of_short_points_and_keeps_the_budget():
    """target_steps 100 at batch 8: a point short of 100 steps trains batch 4, 2 or 1, the largest that
    gives it 100 steps (1 if none does); D = steps x batch x block and C within half a step of the budget."""
    widths, budget = [16, 32, 64], 4e9
    base, _ = _plan({"budgets": [budget], "widths": widths, "min_steps": 1})
    assert {pt.train.batch_size for pt in base} == {8}
    points, _ = _plan({"budgets": [budget], "widths": widths, "min_steps": 1, "target_steps": 100})
    batches = []
    for pt in points:
        rows_steps = budget / (pt.flops_per_token * 16)  # steps x batch the budget buys
        batch = next((b for b in (8, 4, 2) if rows_steps / b >= 100), 1)
        assert pt.train.batch_size == batch and pt.train.steps == round(rows_steps / batch)
        assert pt.tokens == pt.train.steps * batch * 16 and abs(pt.flops / budget - 1) <= 0.5 / pt.train.steps
        assert pt.train.lr == 3e-3  # the lr is kept
        batches.append(batch)
    assert batches[0] == 8 and batches[-1] < 8  # the cheapest model kept its batch, the largest did not


def test_sweep_rules_reach_the_runs_and_old_sweep_settings_read_as_rules_off(data_dir, tmp_path, capsys):
    """A sweep with the three rules trains each point with its planned lr and batch (the run's own
    train_state.pt says so); a sweep.json written before the rules existed reads as the rules off."""
    config = tmp_path / "sweep.toml"
    rules = "sizes_per_budget = 2\ntokens_per_param = 2\nlr_width_exponent = 1.0\ntarget_steps = 40"
    config.write_text(sweep_toml(data_dir, tmp_path / "out", budgets="[2.5e8]", extra=rules))
    assert main(["scale", "sweep", "--config", str(config)]) == 0
    model, train, spec = sweep.load_sweep_config(config)
    planned = {pt.name: pt for pt in grid.plan_points(model, train, spec)[0]}
    results = read_results(tmp_path / "out" / sweep.RESULTS)
    assert [r.name for r in results] == list(planned) and len(results) == 2
    for r in results:
        cfg = torch.load(tmp_path / "out" / r.extra["run_dir"] / loop.TRAIN_STATE, weights_only=True)["train_config"]
        pt = planned[r.name]
        assert cfg["lr"] == pytest.approx(3e-3 * 32 / pt.model.d_model) == r.extra["lr"]
        assert cfg["batch_size"] == pt.train.batch_size == r.extra["batch_size"]
        assert r.tokens == cfg["steps"] * cfg["batch_size"] * 16 and cfg["steps"] >= 40 or cfg["batch_size"] == 1
    assert any(r.extra["batch_size"] < 4 for r in results)
    # a sweep.json of before the rules: no keys for them, so they read as off (the defaults)
    old = tmp_path / "old"
    old.mkdir()
    settings = json.loads((tmp_path / "out" / sweep.SETTINGS).read_text())
    settings["sweep"] = {"warmup_fraction": 0.1, "min_steps": 5}
    (old / sweep.SETTINGS).write_text(json.dumps(settings))
    off = grid.SweepConfig(budgets=[2.5e8], widths=[16, 32, 48], warmup_fraction=0.1, min_steps=5, out_dir=str(old))
    sweep.check_settings(old, model, train, off, write=False)
    with pytest.raises(LlmkitError, match="run with sweep lr_width_exponent=0.0, this config has 1.0"):
        sweep.check_settings(old, model, train, spec, write=False)


def sweep_toml(data: Path, out: Path, budgets: str = "[2.5e8, 5e8]", extra: str = "", train: str = "") -> str:
    return f"""
[model]
preset = "tiny-llama-10m"
n_layer = 2
d_model = 32
n_head = 2
n_kv_head = 1
d_ff = 88
max_seq_len = 32

[train]
data = "{data}"
batch_size = 4
block_size = 16
lr = 3e-3
min_lr = 3e-4
eval_batches = 2
save_interval = 30
log_interval = 5
dtype = "fp32"
device = "cpu"
seed = 3
{train}
[sweep]
budgets = {budgets}
widths = [16, 32, 48]
warmup_fraction = 0.1
min_steps = 5
out_dir = "{out}"
{extra}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Token shards of 60 passages of the Python docs (byte-level BPE, 320 ids), made by the real code."""
    root = tmp_path_factory.mktemp("scale-data")
    texts = list(python_docs_texts())[:60]
    docs = root / "docs"
    docs.mkdir()
    for i, text in enumerate(texts):
        (docs / f"doc{i:02d}.txt").write_text(text[:3000])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        tokenize_corpus([("docs", None)], train_tokenizer(texts, "bpe", 320), root / "shards", val_fraction=0.1,
                        progress=False)  # fmt: skip
    finally:
        os.chdir(cwd)
    return root / "shards"


@pytest.fixture(scope="module")
def tiny_sweep(data_dir, tmp_path_factory):
    """2 budgets x 3 widths, run through the CLI: the sweep the tests below read."""
    root = tmp_path_factory.mktemp("sweep")
    config = root / "sweep.toml"
    config.write_text(sweep_toml(data_dir, root / "out"))
    assert main(["scale", "sweep", "--config", str(config)]) == 0
    return config, root / "out"


def test_budget_too_small_and_owned_settings_are_one_line_errors(data_dir, tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(sweep_toml(data_dir, tmp_path / "out", budgets="[1e6]"))
    assert main(["scale", "sweep", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "budget 1e6 FLOPs trains the smallest model (l1-d16" in err
    assert "raise the budget to at least" in err
    for train, extra, message in [
        ("steps = 10", "", "[train]: steps is set by the sweep for each point"),
        ("", "widths2 = [1]", "[sweep]: unknown key(s) widths2"),
        ("", "layers = [1]", "layers has 1 values for 3 widths"),
    ]:
        config.write_text(sweep_toml(data_dir, tmp_path / "out", extra=extra, train=train))
        assert main(["scale", "sweep", "--config", str(config), "--dry-run"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_sweep_points_are_pretraining_runs_whose_flops_are_the_trainers_count(tiny_sweep):
    """Every point: a run directory with a model card and train_state.pt; D = steps x batch x block;
    C = the trainer's flops_per_token x D = the FLOPs the run itself logged; the cosine schedule ends
    at the run's last step; the points are ordered and named by budget and shape."""
    _, out = tiny_sweep
    results = read_results(out / sweep.RESULTS)
    assert [r.name for r in results] == [f"c{b}-{s}" for b in ("2.5e8", "5e8") for s in ("l1-d16", "l2-d32", "l3-d48")]
    for r in results:
        run = out / r.extra["run_dir"]
        assert (run / "README.md").is_file() and (run / loop.TRAIN_STATE).is_file()
        saved = torch.load(run / loop.TRAIN_STATE, weights_only=True)
        cfg = saved["train_config"]
        model_cfg = ModelConfig.from_dict(saved["model_config"])
        built = build_model(model_cfg)
        assert r.params == sum(m.weight.numel() for m in built.modules() if isinstance(m, torch.nn.Linear))
        assert r.tokens == saved["tokens_seen"] == cfg["steps"] * 4 * 16
        assert r.flops == flops_per_token(built, model_cfg, 16) * r.tokens == r.extra["flops_logged"]
        assert abs(r.flops / r.budget - 1) < 0.5 / cfg["steps"] + 1e-9  # whole steps: within half a step
        assert cfg["warmup_steps"] == round(0.1 * cfg["steps"]) and cfg["eval_interval"] == cfg["steps"]
        records = [json.loads(line) for line in (run / loop.METRICS).read_text().splitlines()]
        last = [x for x in records if "lr" in x][-1]
        assert last["step"] == cfg["steps"] and last["lr"] == pytest.approx(lr_at(cfg["steps"] - 1, _train(cfg)))
        assert lr_at(cfg["steps"], _train(cfg)) == cfg["min_lr"]
        assert r.val_loss == [x["val_loss"] for x in records if "val_loss" in x][-1]
    assert json.loads((out / sweep.SETTINGS).read_text())["sweep"] == {
        "warmup_fraction": 0.1, "min_steps": 5, "sizes_per_budget": 0, "tokens_per_param": 20.0,
        "lr_width_exponent": 0.0, "target_steps": 0,
    }  # fmt: skip


def _train(cfg: dict):
    from llmkit.config import TrainConfig

    return TrainConfig.from_dict(cfg)


def test_fit_reads_the_sweep_and_plan_law_uses_the_fitted_law(tiny_sweep, tmp_path, capsys):
    _, out = tiny_sweep
    results = out / sweep.RESULTS
    assert main(["scale", "fit", str(results), "--bootstrap", "3", "--json", "--plot", str(tmp_path / "p"),
                 "--budget", "1e12", "--predict", "20K,1M"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["points"] == 6 and report["bootstrap_resamples"] == 3 and len(report["plots"]) == 3
    assert set(report["approach3"]) == {"E", "A", "B", "alpha", "beta", "a", "b"}
    law = Law(**{name: report["approach3"][name]["value"] for name in ("E", "A", "B", "alpha", "beta")})
    assert report["predictions"][0]["loss"]["value"] == pytest.approx(float(law.loss(20e3, 1e6)))

    assert main(["plan", "--flops", "1e14", "--law", str(results), "--json"]) == 0
    optimal = json.loads(capsys.readouterr().out)["compute_optimal"]
    assert optimal["law"]["source"].startswith(f"law fitted to {results}")
    assert optimal["law"]["alpha"] == pytest.approx(law.alpha) and optimal["law"]["E"] == pytest.approx(law.E)
    expected = law.optimal(1e14)
    if not law.degenerate:
        assert optimal["parametric_fit"]["parameters"] == pytest.approx(expected[0])
    fitted = optimal["parametric_fit"]
    assert fitted["loss"] == pytest.approx(float(law.loss(fitted["parameters"], fitted["tokens"])))
    assert main(["plan", "--flops", "1e14"]) == 0  # the default stays Chinchilla's published law
    assert "Chinchilla fit (approach 3)" in capsys.readouterr().out
    assert main(["plan", "--flops", "1e14", "--law", str(results)]) == 0
    assert f"law fitted to {results} (approach 3, 6 points)" in capsys.readouterr().out


def test_a_killed_sweep_resumes_without_redoing_finished_points(tiny_sweep, monkeypatch, capsys):
    """The sweep is stopped twice: once after its first point (the exception injected as the second
    starts), once inside the second point's run after its step-30 checkpoint. Run again, it trains
    neither finished point again, resumes the second from its checkpoint, and every final loss equals
    the uninterrupted sweep's, bit for bit."""
    config, reference = tiny_sweep
    out = reference.parent / "killed"
    text = config.read_text().replace(f'out_dir = "{reference}"', f'out_dir = "{out}"').replace("[2.5e8, 5e8]", "[5e8]")
    config = config.with_name("killed.toml")
    config.write_text(text)
    model, train, spec = sweep.load_sweep_config(config)
    real_run_point, started = sweep.run_point, []

    def stops_at_the_second(point, env):
        started.append(point.name)
        if len(started) == 2:
            raise KeyboardInterrupt
        return real_run_point(point, env)

    monkeypatch.setattr(sweep, "run_point", stops_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(model, train, spec)
    first = out / "runs" / started[0]
    assert [r.name for r in read_results(out / sweep.RESULTS)] == [started[0]]
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    real_step, calls = loop.train_step, []

    def dies_at_step_33(state, batches):
        calls.append(state.step)
        if state.step == 33 and state.cfg.out_dir.endswith("l2-d32"):
            raise KeyboardInterrupt
        return real_step(state, batches)

    monkeypatch.setattr(sweep, "run_point", real_run_point)
    monkeypatch.setattr(loop, "train_step", dies_at_step_33)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(model, train, spec)
    second = out / "runs" / "c5e8-l2-d32"
    assert torch.load(second / loop.TRAIN_STATE, weights_only=True)["step"] == 30
    monkeypatch.undo()

    started.clear()
    monkeypatch.setattr(sweep, "run_point", lambda point, env: started.append(point.name) or real_run_point(point, env))
    capsys.readouterr()
    outcome = sweep.run_sweep(model, train, spec)
    assert started == ["c5e8-l2-d32", "c5e8-l3-d48"] and outcome.ran == 2
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # never touched again
    assert "3 points (1 budgets), 1 done, 2 to run" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (second / loop.METRICS).read_text().splitlines()]
    assert steps == sorted(set(steps)) or steps.count(0) == 1  # the log reads as one run: steps 31-33 were dropped
    assert steps[-1] == torch.load(second / loop.TRAIN_STATE, weights_only=True)["step"]
    want = {r.name: r.val_loss for r in read_results(reference / sweep.RESULTS)}
    got = read_results(out / sweep.RESULTS)
    assert sorted(r.name for r in got) == sorted(n for n in want if n.startswith("c5e8"))
    assert all(r.val_loss == want[r.name] for r in got)  # the resumed run retraced the uninterrupted one
    assert sweep.run_sweep(model, train, spec).ran == 0  # all done: nothing runs


def test_a_sweep_refuses_other_base_settings_in_its_directory(tiny_sweep, capsys):
    config, out = tiny_sweep
    assert main(["scale", "sweep", "--config", str(config), "--train.lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert f"the sweep in {out} was run with train lr=0.003, this config has 0.001" in err
    # more budgets are welcome: only the new points run (here: the grid prints them, --dry-run)
    config2 = config.with_name("more.toml")
    config2.write_text(config.read_text().replace("[2.5e8, 5e8]", "[2.5e8, 5e8, 1e9]"))
    assert main(["scale", "sweep", "--config", str(config2), "--dry-run"]) == 0
    assert "9 points (3 budgets), 6 done, 3 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_workers_run_points_in_processes_with_the_same_results(tiny_sweep):
    """--workers 2: the points in two spawned processes give the in-process sweep's losses exactly."""
    config, reference = tiny_sweep
    out = reference.parent / "workers"
    config2 = config.with_name("workers.toml")
    config2.write_text(config.read_text().replace(f'out_dir = "{reference}"', f'out_dir = "{out}"'))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "llmkit",
        "scale",
        "sweep",
        "--config",
        str(config2),
        "--workers",
        "2",
        "--threads",
        "2",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    want = {r.name: r.val_loss for r in read_results(reference / sweep.RESULTS)}
    got = {r.name: r.val_loss for r in read_results(out / sweep.RESULTS)}
    assert got == want
    assert len(list((out / "logs").glob("*.log"))) == 6 and "ETA" in result.stdout


@pytest.mark.slow
def test_torchrun_processes_share_each_point_as_one_process_with_their_global_batch(data_dir, tmp_path):
    """torchrun --nproc-per-node 2 with batch 2 each == one process with batch 4: the same steps per
    point, and losses within float tolerance; rank 0 alone writes the results."""
    one, two = tmp_path / "one", tmp_path / "two"
    config = tmp_path / "sweep.toml"
    config.write_text(sweep_toml(data_dir, one, budgets="[2.5e8]"))
    assert main(["scale", "sweep", "--config", str(config)]) == 0
    config.write_text(sweep_toml(data_dir, two, budgets="[2.5e8]").replace("batch_size = 4", "batch_size = 2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "llmkit", "scale", "sweep"]
    result = subprocess.run(command + ["--config", str(config)], env=env, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = read_results(one / sweep.RESULTS), read_results(two / sweep.RESULTS)
    assert [r.name for r in a] == [r.name for r in b] and len(b) == 3
    for x, y in zip(a, b, strict=True):
        assert (x.tokens, x.flops) == (y.tokens, y.flops) and y.flops == y.extra["flops_logged"]
        assert abs(x.val_loss - y.val_loss) < 1e-4


def test_points_no_law_fits_give_a_finite_law_not_an_overflow():
    """Losses that rise with N at every budget (the bench's first domain-corpus sweep: big models on few
    tokens) once drove L-BFGS to ln A ~ 1e3, and exp() raised OverflowError; the box keeps it finite."""
    from llmkit.scale.fit import fit_law

    # the bench's 15 points, as results.jsonl holds them
    params = [98304, 44288, 157696, 409344, 868352, 98304, 44288, 409344, 157696, 868352,
              98304, 44288, 409344, 157696, 868352]  # fmt: skip
    tokens = [677888, 1587200, 438272, 172032, 83968, 1628160, 3811328, 413696, 1050624, 200704,
              4069376, 9527296, 1034240, 2625536, 499712]  # fmt: skip
    losses = [4.605502, 4.313217, 5.319108, 5.741674, 5.961951, 3.890877, 4.038802, 5.278481, 4.185487,
              5.740984, 3.4772, 3.850319, 4.349853, 3.394689, 5.086548]  # fmt: skip
    law = fit_law(params, tokens, losses)
    assert all(math.isfinite(v) for v in (law.E, law.A, law.B, law.alpha, law.beta))

"""Tests of scaling.py: the fits on synthetic losses with known constants, the closed-form optimum
against brute force, the counting convention, the plan, and a 2 x 2 micro sweep that resumes."""
import contextlib
import io
import json
import math
import os
import shutil

import numpy as np
import pytest

import plumbing
import scaling
from conftest import generated_text
import scaling_laws
from plumbing import UserError
from model import ModelConfig, Transformer


def isoflop_grid(law, budgets, widths, noise, seed):
    """Synthetic IsoFLOP data: at each budget, sizes around the true optimum, D = C / 6N, and
    multiplicative noise on the loss (a run's seed noise)."""
    rng = np.random.default_rng(seed)
    C, N = [], []
    for budget in budgets:
        n_opt, _ = scaling_laws.compute_optimum(law, budget)
        C += [budget] * len(widths)
        N += [n_opt * w for w in widths]
    C, N = np.array(C), np.array(N)
    D = C / (6 * N)
    loss = scaling_laws.loss_law(law, N, D) * np.exp(rng.normal(0.0, noise, len(N)))
    return C, N, D, loss


def test_fits_recover_chinchilla_exponents_and_bootstrap_intervals_cover_them():
    # Losses generated from Chinchilla's own published constants over its own range of budgets
    # (6e18 .. 3e21 FLOPs), 0.5% noise, 7 sizes 2x apart per budget. A 95% interval misses one
    # draw in twenty by design: over noise seeds 0-7 this design's four intervals covered the
    # truth 31 times out of 32 (seed 0 misses alpha by 0.002); the draw tested here is seed 1.
    law = scaling_laws.CHINCHILLA
    C, N, D, loss = isoflop_grid(law, np.geomspace(6e18, 3e21, 5), 2.0 ** np.arange(-3, 4), 0.005, 1)
    fits = scaling_laws.fit_all(C, N, D, loss)
    fitted = fits["law"]
    assert abs(fitted["alpha"] - law["alpha"]) < 0.05 and abs(fitted["beta"] - law["beta"]) < 0.05
    assert abs(fitted["E"] - law["E"]) < 0.15
    a_true = law["beta"] / (law["alpha"] + law["beta"])
    assert abs(fits["iso"]["a"] - a_true) < 0.05             # approach 2 finds the same split
    assert abs(fits["iso"]["a"] + fits["iso"]["b"] - 1) < 0.02   # and N_opt * D_opt ~ C
    assert all(row["inside"] for row in fits["iso"]["rows"])

    boots = scaling_laws.bootstrap(C, N, D, loss, n_boot=40, seed=0, warm=fits)
    ci = scaling_laws.intervals([scaling_laws.headline(b) for b in boots if b])
    for name, true in (("alpha", law["alpha"]), ("beta", law["beta"]), ("a3", a_true), ("a2", a_true)):
        low, high = ci[name]
        assert low <= true <= high, f"{name}: {true} outside [{low:.3f}, {high:.3f}]"
        assert high - low < 0.25, f"{name}: interval [{low:.3f}, {high:.3f}] too wide to mean anything"


def test_frontier_fit_recovers_its_exponent():
    rng = np.random.default_rng(0)
    C = np.geomspace(1e11, 1e14, 8)
    loss = (1.1 + 300 * C ** -0.21) * np.exp(rng.normal(0, 0.002, len(C)))
    fit = scaling_laws.fit_frontier(C, loss)
    assert abs(fit["gamma"] - 0.21) < 0.03 and abs(fit["E"] - 1.1) < 0.1


def test_closed_form_optimum_matches_brute_force_search_over_n():
    for law in (scaling_laws.CHINCHILLA, scaling_laws.BESIROGLU):
        for C in (1e18, 1e21, 5.76e23):
            N_closed, D_closed = scaling_laws.compute_optimum(law, C)
            N = np.geomspace(1e5, 1e14, 400_001)             # brute force, written out here
            loss = law["E"] + law["A"] / N ** law["alpha"] + law["B"] / (C / (6 * N)) ** law["beta"]
            N_brute = N[np.argmin(loss)]
            assert math.isclose(N_closed, N_brute, rel_tol=2e-4)
            assert math.isclose(N_closed * D_closed * 6, C, rel_tol=1e-9)
            assert math.isclose(scaling_laws.search_optimum(law, C)[0], N_closed, rel_tol=1e-4)


def test_the_rounding_comment_numbers():
    """The numbers quoted in scaling.py's comment on Chinchilla's rounded constants."""
    chin = scaling_laws.CHINCHILLA
    assert round(chin["beta"] / (chin["alpha"] + chin["beta"]), 3) == 0.452
    N, D = scaling_laws.compute_optimum(chin, 5.76e23)
    assert round(N / 1e9) == 32 and round(D / N) == 93
    ratios = [D / N for a in (0.335, 0.345) for b in (0.275, 0.285)
              for N, D in [scaling_laws.compute_optimum(dict(chin, alpha=a, beta=b), 5.76e23)]]
    assert round(min(ratios)) == 44 and round(max(ratios)) == 196
    N, D = scaling_laws.compute_optimum(scaling_laws.BESIROGLU, 5.76e23)
    assert round(N / 1e9) == 72 and round(D / N, 1) == 18.4


def test_parameter_count_includes_the_tied_head_but_not_positions():
    shape, vocab, block = (2, 2, 32), 320, 128
    N, flops_per_token = scaling.shape_counts(shape, vocab, block)
    model = Transformer(ModelConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=32))
    total = sum(p.numel() for p in model.parameters())
    assert N == total - block * 32                      # everything but the position table
    assert N == 2 * (12 * 32 * 32 + 2 * 32) + 32 + vocab * 32   # 12 d^2 per block, LayerNorms, head
    assert flops_per_token == 6 * N + 12 * 2 * block * 32          # 6N + attention (PaLM)


# cpu: pydocs in bytes (its training tokens, vocabulary padded to 320); gpu: 300M bpe:1020
# tokens (~750 MB of text), more than the ~75M it needs. Plans only: nothing is trained.
@pytest.mark.parametrize("name, n_train, vocab", [("cpu", 1_772_699, 320), ("gpu", 300_000_000, 1024)])
def test_preset_plan_is_an_isoflop_grid_under_four_epochs(name, n_train, vocab):
    preset = scaling.SWEEP_PRESETS[name]
    settings = preset.train
    plan = scaling.plan_sweep(scaling.make_setup(preset, settings, vocab, n_train, seed=1))
    ladder_N = [scaling.shape_counts(s, vocab, settings["block_size"])[0] for s in preset.ladder]
    assert all(1.6 < b / a < 2.5 for a, b in zip(ladder_N, ladder_N[1:]))   # sizes ~2x apart
    assert len(preset.budgets) >= 4 and all(1.3 < b / a < 2.1 for a, b in zip(preset.budgets, preset.budgets[1:]))
    for budget in preset.budgets:
        row = [r for r in plan if r.budget == budget]
        assert len({r.shape for r in row}) == preset.sizes_per_row >= 5
        for r in row:                                    # each run spends its budget, to one step
            assert abs(r.flops - budget) <= r.flops_per_token * r.batch_size * settings["block_size"]
            assert r.steps >= preset.min_steps / 2 and preset.min_batch <= r.batch_size <= settings["batch_size"]
    assert max(r.epochs for r in plan) <= preset.max_epochs
    repeated = {}
    for r in plan:
        repeated.setdefault((r.budget, r.shape), []).append(r.seed)
    assert sum(len(s) == 3 for s in repeated.values()) == preset.seed_configs >= 2
    holdout = scaling.plan_holdout(scaling.make_setup(preset, settings, vocab, n_train, seed=1))
    assert holdout.budget >= 3 * max(preset.budgets) and holdout.epochs <= preset.max_epochs
    with pytest.raises(UserError, match="bigger --corpus"):
        scaling.plan_sweep(scaling.make_setup(preset, settings, vocab, n_train // 10, seed=1))


def test_learning_rate_and_init_follow_the_width():
    preset = scaling.SWEEP_PRESETS["cpu"]
    setup = scaling.make_setup(preset, preset.train, 320, 1_772_699, seed=1)
    assert preset.lr_width == 36
    at = lambda shape, budget: scaling.make_run(setup, "grid", budget, shape, 1)
    base = at((1, 2, 36), 1e12)                           # full batch at the anchor width: the preset's lr
    assert base.batch_size == preset.train["batch_size"] and base.lr == pytest.approx(preset.train["lr"])
    assert at((1, 3, 72), 1e12).lr == pytest.approx(base.lr / 2)
    assert at((1, 6, 144), 1e12).lr == pytest.approx(base.lr / 4)
    small = at((1, 3, 72), 1.25e11)                       # few steps: the batch was halved
    assert small.batch_size == base.batch_size // 2
    assert small.lr == pytest.approx(base.lr / 2 / math.sqrt(2))
    # The initial weights' std falls as 1/sqrt(width), from GPT-2's 0.02 at width 768.
    assert preset.init_width == 768
    assert at((1, 2, 36), 1e12).init_std == pytest.approx(0.02 * math.sqrt(768 / 36))
    assert scaling.train_config(base, preset.train).init_std == base.init_std      # reaches the model
    # Without lr_width and init_width, the same settings at every width (the tiny preset).
    tiny = scaling.SWEEP_PRESETS["tiny"]
    tiny_setup = scaling.make_setup(tiny, tiny.train, 320, 10_000, seed=1)
    tiny_runs = [scaling.make_run(tiny_setup, "grid", 2e7, s, 1) for s in tiny.ladder]
    assert {r.lr for r in tiny_runs} == {tiny.train["lr"]} and {r.init_std for r in tiny_runs} == {0.02}


@pytest.fixture(scope="module")
def micro_sweep(tmp_path_factory, measured_speeds):
    """The tiny preset's 2 x 2 sweep, run once for the tests below with the default workers (one
    process per core), and what it printed. Its cache is its own, as every test's is (conftest)."""
    folder = tmp_path_factory.mktemp("micro-sweep")
    corpus = folder / "corpus.txt"
    corpus.write_text(generated_text(), encoding="utf-8")
    (folder / "cache").mkdir()
    shutil.copy(measured_speeds, folder / "cache" / "measured.json")
    argv = ["--preset", "tiny", "--corpus", str(corpus), "--cache-dir", str(folder / "cache"), "--n-boot", "10"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        scaling.main(argv + ["--out-dir", str(folder / "sweep")])
    return dict(argv=argv, out=folder / "sweep", printed=printed.getvalue())


def test_a_dry_run_makes_no_folder_and_predicts_with_the_cores_there_are(micro_sweep, tmp_path, monkeypatch,
                                                                        capsys):
    """--workers beyond the runs, or beyond the cores: as many runs at a time as there are runs,
    and the wall time predicted as if the processes took turns on the cores they share."""
    spans = []
    monkeypatch.setattr(plumbing, "cpu_cores", lambda: 1)
    monkeypatch.setattr(plumbing, "makespan", lambda seconds, workers: spans.append(workers) or sum(seconds))
    out = tmp_path / "new"
    scaling.main(micro_sweep["argv"] + ["--out-dir", str(out), "--dry-run", "--workers", "8", "--device", "cpu"])
    assert "4 run(s) to train, 4 at a time" in capsys.readouterr().out
    assert spans == [1] and not out.exists()


def test_micro_sweep_writes_jsonl_resumes_and_replots(micro_sweep, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    shutil.copytree(micro_sweep["out"], out)
    argv = micro_sweep["argv"] + ["--out-dir", str(out)]
    results = out / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 4 and len({r["key"] for r in records}) == 4
    for r in records:
        # Learned: below an untrained model's loss, ln(320) = 5.77 nats over the padded vocabulary.
        assert r["val_loss"] < math.log(320) - 0.04
        assert r["flops"] == r["flops_per_token"] * r["tokens"] and r["curve"]
    # And more compute helps: at each size, twice the budget ends at least 0.05 nats lower.
    loss = {(r["N"], r["budget"]): r["val_loss"] for r in records}
    for n in {r["N"] for r in records}:
        assert loss[n, 2e7] < loss[n, 1e7] - 0.05
    assert "predicted wall time" in micro_sweep["printed"]

    # A second call finds every run done: it must not train (or probe) anything.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(scaling, "train_run", no_training)
    monkeypatch.setattr(scaling.train_clm, "train", no_training)
    before = results.read_text()
    with open(results, "a") as f:                          # a sweep killed while writing a line
        f.write('{"role": "grid", "key": "grid:4e+07:1-2')
    scaling.main(argv)
    assert "incomplete" in capsys.readouterr().out
    assert results.read_text().startswith(before)
    plumbing.append_jsonl(str(results), dict(records[0], key="appended"))   # the cut line is closed
    assert [r["key"] for r in scaling.load_results(str(results))][-1] == "appended"
    scaling.main(argv + ["--plot-only"])
    assert os.path.getsize(out / "loss_vs_compute.png") > 1000

    # Results made with other settings are never mixed into the same file.
    monkeypatch.undo()
    with pytest.raises(UserError, match="other settings"):
        scaling.main(argv + ["--tokenizer", "bpe:300"])

    # A results file that scaling.py did not write is refused in one line, not a KeyError.
    results.write_text('{"x": 1}\n')
    with pytest.raises(UserError, match="records that scaling.py did not write"):
        scaling.main(argv + ["--plot-only"])
    results.write_text('{"x": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 is not a record"):
        scaling.main(argv + ["--plot-only"])
    # One of its own records edited by hand: refused in one line, not a KeyError while plotting.
    for edit in (dict(N="49244"), dict(val_loss=float("nan")), dict(curve=[]), dict(role="other")):
        results.write_text("".join(json.dumps(dict(r, **edit) if i == 1 else r) + "\n" for i, r in enumerate(records)))
        with pytest.raises(UserError, match=f"results.jsonl: a record has no valid {next(iter(edit))}, "
                                            f"which the sweep always writes"):
            scaling.main(argv + ["--plot-only"])
    # '' saves nothing elsewhere, but a sweep is its results: refused, not sent to out/scaling-tiny.
    with pytest.raises(UserError, match="--out-dir '': a sweep keeps its results in a folder"):
        scaling.main(["--preset", "tiny", "--out-dir", "", "--dry-run"])


def test_bootstrap_with_distinct_budgets_gives_intervals_of_nonzero_width(capsys):
    # Every run has its own budget (as in Chinchilla's published points): resampling within a
    # budget would return the data unchanged. The bootstrap must pool the runs instead.
    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(1e4), np.log(1e6), 40))
    D = np.exp(rng.uniform(np.log(1e6), np.log(1e8), 40))
    law = dict(E=1.5, A=400.0, B=900.0, alpha=0.35, beta=0.3)
    loss = scaling_laws.loss_law(law, N, D) * np.exp(rng.normal(0, 0.01, 40))
    C = 6 * N * D                                              # all distinct
    boots = [b for b in scaling_laws.bootstrap(C, N, D, loss, n_boot=20, seed=0) if b]
    assert "one pool" in capsys.readouterr().out
    alphas = [b["law"]["alpha"] for b in boots]
    assert len(boots) >= 15 and max(alphas) - min(alphas) > 1e-3


def test_parallel_runs_give_exactly_the_sequential_results(micro_sweep, tmp_path):
    """Each run is seeded and single-threaded, so the sweep in one process must reproduce the
    sweep in two worker processes to the last bit, only in another order."""
    scaling.main(micro_sweep["argv"] + ["--out-dir", str(tmp_path / "one"), "--workers", "1"])
    losses = {folder: {r["key"]: r["val_loss"] for r in scaling.load_results(str(folder / "results.jsonl"))}
              for folder in (tmp_path / "one", micro_sweep["out"])}
    assert len(losses[micro_sweep["out"]]) == 4 and losses[tmp_path / "one"] == losses[micro_sweep["out"]]


def synthetic_records(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28, noise=0.002, seed=0):
    """Run records as scaling.py writes them, from a known law L(N, D) = E + A/N^alpha + B/D^beta
    (Chinchilla's constants) with a little seeded noise: 4 budgets x 5 sizes around each budget's
    optimum, a second seed at one configuration, and a held-out run at 4x the largest budget."""
    rng = np.random.default_rng(seed)
    law = lambda N, D: E + A / N ** alpha + B / D ** beta

    def record(role, budget, N, repeat=0):
        D = budget / (6 * N)
        return dict(role=role, budget=budget, shape=[1, 1, int(N)], N=int(N), tokens=int(D), flops=budget,
                    flops_per_token=6 * int(N), key=f"{role}:{budget:.3g}:{int(N)}:{repeat}",
                    val_loss=float(law(N, D) * (1 + noise * rng.standard_normal())), curve=[[budget, 5.0]])
    budgets = [1e18, 4e18, 1.6e19, 6.4e19]
    records = [record("grid", C, N) for C in budgets
               for N in np.geomspace(0.25, 4, 5) * 0.6 * (C / 6) ** 0.5 / 10]
    records.append(record("grid", budgets[1], records[7]["N"], repeat=1))
    records.append(dict(record("holdout", 4 * budgets[-1], 0.6 * (4 * budgets[-1] / 6) ** 0.5 / 10), budget=4 * budgets[-1]))
    return records, law


def test_analysis_recovers_a_known_law_and_predicts_the_held_out_run(tmp_path):
    """The whole analysis (three fits, bootstrap intervals, seed noise, the held-out prediction and
    its interval, fits.json and the plots) on records made from a known law: the exponents come
    back near the truth, and the held-out run lands inside its predicted interval."""
    records, law = synthetic_records()
    report = scaling.analyse(records, n_boot=20, seed=0)
    h = report["headline"]
    assert abs(h["alpha"] - 0.34) < 0.05 and abs(h["beta"] - 0.28) < 0.05 and abs(h["E"] - 1.69) < 0.1
    assert report["ci"]["alpha"][0] <= h["alpha"] <= report["ci"]["alpha"][1]
    assert report["noise"]["configs"] == 1 and report["noise"]["sd"] > 0
    hold = report["holdout"]
    assert hold["covered"] and abs(hold["error"]) < 0.01
    assert hold["interval"][0] < hold["predicted"] < hold["interval"][1]
    assert report["cost"](1000) == pytest.approx(6000)                 # 6N: what these records say
    scaling.save_report(report, tmp_path / "fits.json")
    saved = json.loads((tmp_path / "fits.json").read_text())
    assert saved["headline"]["alpha"] == pytest.approx(h["alpha"]) and "boots" not in saved
    paths = scaling.plot_scaling(records, report, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["loss_vs_compute.png", "isoflop.png", "optimal_size.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    # A law with another exponent is told apart: the same analysis does not return the old alpha.
    other, _ = synthetic_records(alpha=0.5, A=2000)
    assert abs(scaling.analyse(other, n_boot=5)["headline"]["alpha"] - 0.5) < 0.05

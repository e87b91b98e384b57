"""End-to-end training on tiny models: the run directory, falling loss, resume, final/ with plain transformers,
W&B offline, and the same run under `accelerate launch` with 2 processes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, launch, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.trainer import train

RECIPE = REPO / "recipes" / "quickstart.yaml"


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file):
    """One tiny run of 2 epochs (30 steps each), shared by the assertions below."""
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    cfg = load_config(
        RECIPE,
        tiny_overrides(
            run_dir,
            corpus_file,
            **{
                "data.max_tokens": 32 * 8 * 30,
                "train.epochs": 2,
                "train.lr": 3e-3,
                "alerts.rules": "[{name: dead_mlp, site: mlp_post, above: 0.0}]",
                "train.plots": True,  # the figures are part of the layout checked below
            },
        ),
    )
    summary = train(cfg)
    return run_dir, cfg, summary


@pytest.mark.slow
def test_run_directory_layout(trained):
    run_dir, cfg, summary = trained
    assert summary.steps == 60 and summary.epochs == 2
    for rel in [
        "config.yaml",
        "metrics.jsonl",
        "alerts.jsonl",
        "liveness/epoch_000.json",
        "liveness/epoch_001.json",
        "plots/frequency_heatmap.png",
        "plots/dead_ratio_per_layer.png",
        "plots/dead_ratio_over_training.png",
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/reviveformer.yaml",
    ]:
        assert (run_dir / rel).is_file(), rel
    assert not (run_dir / "report.html").exists()  # train.report=false (the tests' default): no page written
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000030", "step_00000060"]  # one per epoch, checkpoint_limit=2
    saved = load_config(run_dir / "config.yaml")
    assert saved.model.activation == "relu" and saved.train.output_dir == str(run_dir)


@pytest.mark.slow
def test_loss_falls_and_metric_names(trained):
    run_dir, _, summary = trained
    rows = metrics_rows(run_dir)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 12  # every 5 of 60 steps
    assert losses[-1] < losses[0] - 1.0
    assert summary.val_loss < math.log(512) - 0.7  # well below a uniform guess over the vocabulary
    keys = set().union(*rows)
    for k in [
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "val/loss",
        "val/ppl",
        "liveness/mlp_post/dead_ratio",
        "liveness/mlp_pre/layer_1/dead_ratio",
        "liveness/attn_out/layer_0/dormant_ratio",
        "capacity/alive_units",
        "capacity/effective_param_fraction",
        "alerts/dead_mlp",
    ]:
        assert k in keys, k
    # warm-up (2 steps) then cosine to 0.1 * lr over 60 steps: the lr logged at step s is the next step's
    for r in rows:
        if "train/lr" in r:
            s = r["step"]
            expected = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 58)))
            assert r["train/lr"] == pytest.approx(expected, rel=1e-9), s


@pytest.mark.slow
def test_logged_val_loss_matches_plain_transformers(trained):
    """final/ loads with plain transformers, and its loss on the validation blocks, computed here with
    transformers' own loss, is the val/loss the run logged last."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reviveformer.data import prepare_data

    run_dir, cfg, summary = trained
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final").eval()
    tok = AutoTokenizer.from_pretrained(run_dir / "final")
    data = prepare_data(cfg.data, cfg.train.seed, tokenizer=tok)
    ids = data.val[:]["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # mean over all shifted tokens, as ours
    assert loss == pytest.approx(summary.val_loss, abs=1e-4)
    liveness = json.loads((run_dir / "liveness" / "epoch_001.json").read_text())
    assert liveness["tokens"] == ids.numel()  # every validation token observed once


@pytest.mark.slow
def test_alert_fires_once_per_crossing(trained):
    run_dir, _, _ = trained
    alerts = [json.loads(line) for line in (run_dir / "alerts.jsonl").read_text().splitlines()]
    rows = metrics_rows(run_dir)
    # independently: crossings of 0.0 per layer in the logged per-layer dead ratios
    expected = 0
    for layer in (0, 1):
        above = False
        for r in rows:
            v = r.get(f"liveness/mlp_post/layer_{layer}/dead_ratio")
            if v is None:
                continue
            if v > 0.0 and not above:
                expected += 1
            above = v > 0.0
    assert len(alerts) == expected


@pytest.mark.slow
def test_resume_ends_with_the_same_weights(tmp_path, corpus_file):
    """A run resumed from a mid-epoch checkpoint ends bit-identical to one run straight through
    (dropout on, stripping on, so RNG, data position, masks and optimizer state all matter)."""
    extra = {
        "data.max_tokens": 32 * 8 * 12,
        "train.epochs": 2,
        "train.checkpoint_every": 4,
        "train.checkpoint_limit": 10,
        "train.deterministic": True,
        "model.dropout": 0.1,
        "revival.method": "synaptic_stripping",
        "revival.fraction": 0.3,
        "liveness.dead_frequency": 0.2,
    }
    straight = tmp_path / "straight"
    train(load_config(RECIPE, tiny_overrides(straight, corpus_file, **extra)))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    # the state a run killed after step 16 (mid second epoch) would have left
    shutil.copytree(straight / "checkpoints" / "step_00000016", resumed / "checkpoints" / "step_00000016")
    summary = train(
        load_config(RECIPE, tiny_overrides(resumed, corpus_file, **extra, **{"train.resume": "auto"}))
    )
    assert summary.steps == 24
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    pruned = sum(int((a[f"transformer.h.{i}.mlp.c_fc.weight"] == 0).sum()) for i in range(2))
    assert pruned > 0  # stripping did act, so the masks took part in the comparison
    la = json.loads((straight / "liveness" / "epoch_001.json").read_text())
    lb = json.loads((resumed / "liveness" / "epoch_001.json").read_text())
    assert la == lb


@pytest.mark.slow
def test_wandb_offline_writes_a_local_run(tmp_path, corpus_file, caplog):
    run_dir = tmp_path / "wb"
    with caplog.at_level("INFO", logger="reviveformer"):
        train(
            load_config(
                RECIPE,
                tiny_overrides(
                    run_dir,
                    corpus_file,
                    **{"data.max_tokens": 32 * 8 * 6, "wandb.mode": "offline", "wandb.group": "tests"},
                ),
            )
        )
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "no W&B offline log file"
    assert "wandb sync" in caplog.text


def test_summary_run_holds_the_figures_and_tables(tmp_path, caplog):
    """A sweep's summary W&B run (offline here): its figures as images and its tables, in the group given;
    nothing at all with W&B disabled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reviveformer.config import WandbConfig
    from reviveformer.tracking import log_summary_run

    png = tmp_path / "val_loss_seeds.png"
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(png)
    plt.close(fig)
    tables = {"sweep/differences": (["arm", "difference"], [["redo", -0.01], ["grama", 0.02]])}

    off = tmp_path / "disabled"
    off.mkdir()
    assert log_summary_run(WandbConfig(mode="disabled"), off, "s", "g", {"sweep/val": png}, tables) is None
    assert list(off.iterdir()) == []

    with caplog.at_level("INFO", logger="reviveformer"):
        where = log_summary_run(
            WandbConfig(mode="offline"), tmp_path, "study-summary", "study", {"sweep/val": png}, tables
        )
    assert where is not None and where.parent == tmp_path / "wandb" and where.name.startswith("offline-run-")
    assert list(where.glob("run-*.wandb")), "no W&B offline log file"
    images = list((where / "files" / "media" / "images" / "sweep").glob("val_*.png"))  # key sweep/val
    assert len(images) == 1
    table = json.loads(next((where / "files" / "media" / "table").rglob("*.table.json")).read_text())
    assert table["columns"] == ["arm", "difference"] and table["data"] == [["redo", -0.01], ["grama", 0.02]]
    assert "wandb sync" in caplog.text


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tmp_path, corpus_file):
    """Two CPU processes train one run; then the same final model audited by 1 and by 2 processes gives
    identical counts (the counts are summed across processes before anything else)."""
    run_dir = tmp_path / "ddp"
    overrides = tiny_overrides(run_dir, corpus_file, **{"data.max_tokens": 32 * 16 * 8, "train.epochs": 1})
    p = launch("reviveformer", ["train", str(RECIPE), *overrides])
    assert p.returncode == 0, p.stderr[-3000:]
    rows = metrics_rows(run_dir)
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [5]  # 8 steps of 2 x 8 sequences, logged once (main process only), not twice
    assert (run_dir / "final" / "model.safetensors").is_file()

    one = tmp_path / "audit1"
    two = tmp_path / "audit2"
    assert main(["audit", str(run_dir), "--out", str(one), "--gradients", "--batch-size", "2"]) == 0
    p = launch("reviveformer", ["audit", str(run_dir), "--out", str(two), "--gradients", "--batch-size", "2"])
    assert p.returncode == 0, p.stderr[-3000:]
    a = json.loads((one / "liveness.json").read_text())
    b = json.loads((two / "liveness.json").read_text())
    assert a["tokens"] == b["tokens"] > 0
    for site in a["sites"]:
        for la, lb in zip(a["sites"][site], b["sites"][site], strict=True):
            assert la["fire_count"] == lb["fire_count"], (site, la["layer"])
    # GraMa scores: per batch, then summed and reduced over the processes; the same batches either way
    assert a["grama"]["batches"] == b["grama"]["batches"] > 1
    for la, lb in zip(a["grama"]["layers"], b["grama"]["layers"], strict=True):
        assert la["scores"] == pytest.approx(lb["scores"], rel=1e-5, abs=1e-7)
        assert la["dormant_units"] == lb["dormant_units"]


@pytest.mark.slow
def test_alert_actions_stop_and_revive(tmp_path, corpus_file):
    """A `stop` rule ends the run cleanly at the log after the first window where it trips (a train log's
    window is read and checked at the next log: one window late; checkpoint and final/ written); a `revive`
    rule runs the revival step there."""
    extra = {"data.max_tokens": 32 * 8 * 20, "train.epochs": 1, "train.lr": 1e-2}
    run_dir = tmp_path / "stop"
    summary = train(
        load_config(
            RECIPE,
            tiny_overrides(
                run_dir,
                corpus_file,
                **extra,
                **{"alerts.rules": "[{name: any_dead, site: mlp_post, above: 0.0, action: stop}]"},
            ),
        )
    )
    first_trip = next(r["step"] for r in metrics_rows(run_dir) if r.get("alerts/any_dead", 0) > 0)
    assert summary.stopped_by == "alert action stop"
    acted = first_trip + 5  # the next train log (train.log_every=5)
    assert summary.steps == acted < 20
    assert (run_dir / "checkpoints" / f"step_{acted:08d}").is_dir()
    assert (run_dir / "final" / "model.safetensors").is_file()

    run_dir = tmp_path / "revive"
    train(
        load_config(
            RECIPE,
            tiny_overrides(
                run_dir,
                corpus_file,
                **extra,
                **{
                    "revival.method": "synaptic_stripping",
                    "alerts.rules": "[{name: any_dead, site: mlp_post, above: 0.0, action: revive}]",
                },
            ),
        )
    )
    rows = metrics_rows(run_dir)
    trips = [r["step"] for r in rows if r.get("alerts/any_dead", 0) > 0]
    revivals = [r["step"] for r in rows if "revival/dead_units" in r]
    # revived at the log after the first trip (or at the epoch end, if that comes first)
    assert trips and min(trips[0] + 5, 20) in revivals
    assert revivals[-1] == 20  # and at the epoch end, as always


@pytest.mark.slow
def test_fine_tune_swaps_the_activation_with_a_warning(trained, tmp_path, corpus_file, caplog):
    run_dir, _, _ = trained
    out = tmp_path / "swap"
    with caplog.at_level("WARNING", logger="reviveformer"):
        train(
            load_config(
                RECIPE,
                tiny_overrides(
                    out,
                    corpus_file,
                    **{
                        "model.init_from": str(run_dir / "final"),
                        "model.activation": "gelu",
                        "data.max_tokens": 32 * 8 * 4,
                        "train.epochs": 1,
                    },
                ),
            )
        )
    assert "swaps the checkpoint's relu" in caplog.text
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.activation_function == "gelu"
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(model.transformer.h[0].mlp.act(x), torch.nn.functional.gelu(x))
    assert load_config(out / "config.yaml").model.activation == "gelu"


@pytest.mark.slow
def test_liveness_sample_every_counts_one_step_in_n(tmp_path, corpus_file):
    """liveness.sample_every=3: the training window holds only the sampled steps' tokens, while the epoch-end
    measurement still sees every validation token. (With train.plots=false: no figure, the json all the same.)"""
    from reviveformer import checkpoint as ckpt
    from reviveformer.data import prepare_data

    run_dir = tmp_path / "sampled"
    cfg = load_config(
        RECIPE,
        tiny_overrides(
            run_dir,
            corpus_file,
            **{
                "data.max_tokens": 32 * 8 * 6,
                "train.epochs": 1,
                "train.log_every": 4,
                "liveness.sample_every": 3,
                "train.plots": False,
            },
        ),
    )
    train(cfg)
    assert not list(run_dir.glob("plots/*.png"))
    # steps 5 and 6 are in the window after the log at step 4; of them only step 6 is sampled (6 % 3 == 0)
    state = ckpt.read_state(run_dir / "checkpoints" / "step_00000006")
    assert state["monitor"]["sites"]["mlp_post"]["tokens"].tolist() == [8 * 32, 8 * 32]
    n_val = prepare_data(cfg.data, cfg.train.seed).val[:]["input_ids"].numel()
    assert json.loads((run_dir / "liveness" / "epoch_000.json").read_text())["tokens"] == n_val


@pytest.mark.slow
def test_window_without_counted_tokens_logs_no_liveness_and_trips_nothing(tmp_path, corpus_file, monkeypatch):
    """liveness.sample_every=7 with train.log_every=5: steps 1-5 count nothing (only step 7 is sampled), so the
    log at step 5 carries no liveness numbers (not a dead ratio of 1.0) and a stop rule does not act on it.
    The load-time check refuses these settings, so it is switched off here: the run itself must cope (a
    resume may shorten a window, and a Config built in code can skip the check)."""
    import reviveformer.trainer

    monkeypatch.setattr(reviveformer.trainer, "check_run_inputs", lambda cfg: None)
    run_dir = tmp_path / "empty-window"
    cfg = load_config(
        RECIPE,
        tiny_overrides(
            run_dir,
            corpus_file,
            **{
                "data.max_tokens": 32 * 8 * 12,
                "train.epochs": 1,
                "train.log_every": 7,
                "liveness.sample_every": 7,
                "alerts.rules": "[{name: mostly_dead, site: mlp_post, above: 0.9, action: stop}]",
            },
        ),
    )
    cfg.train.log_every = (
        5  # set after loading: the run itself must cope, whatever the load-time checks allow
    )
    summary = train(cfg)
    assert summary.stopped_by is None and summary.steps == 12  # (the epoch end, at 12, is its own row)
    rows: dict[int, dict] = {}
    for r in metrics_rows(run_dir):  # one row per log call: merge those of a step
        rows.setdefault(r["step"], {}).update(r)
    assert [s for s in sorted(rows) if "train/loss" in rows[s]] == [5, 10]
    assert not [k for k in rows[5] if k.startswith(("liveness/", "alerts/"))]
    assert 0.0 <= rows[10]["liveness/mlp_post/dead_ratio"] < 0.9  # step 7's tokens, a real measurement
    assert rows[10]["alerts/mostly_dead"] == 0

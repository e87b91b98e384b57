"""What a run tells its user: revival lines and totals on the console, quiet third-party output, and the
report pages (RUN/report.html, `reviveformer report`, compare.html), all checked against the run's own
metrics.jsonl and alerts.jsonl, read here independently."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides
from reviveformer.cli import main
from reviveformer.config import load_config
from reviveformer.revival.describe import event_line, totals_line
from reviveformer.revival.events import revival_event
from reviveformer.trainer import train

PNG = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH = 10


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file):
    """A baseline trained in-process, then a fine-tune of it with synaptic stripping through the CLI in a
    subprocess (as a user runs it: the console is what we check), 2 epochs, an alert that fires."""
    root = tmp_path_factory.mktemp("report")
    base = root / "base"
    train(
        load_config(
            REPO / "recipes" / "quickstart.yaml",
            tiny_overrides(
                base,
                corpus_file,
                **{"data.max_tokens": 32 * 8 * STEPS_PER_EPOCH, "train.epochs": 1, "train.lr": 1e-2},
            ),
        )
    )
    ft = root / "ft"
    overrides = tiny_overrides(
        ft,
        corpus_file,
        **{
            "model.init_from": str(base / "final"),
            "data.tokenizer": "bpe",
            "train.progress": "true",
            "train.plots": "true",  # the page and its figures are what this file checks
            "train.report": "true",
            "data.max_tokens": 32 * 8 * STEPS_PER_EPOCH,
            "train.epochs": 2,
            "train.lr": 5e-3,
            "liveness.dead_frequency": 0.05,
            "alerts.rules": "[{name: dead_mlp, site: mlp_post, above: 0.0}]",
        },
    )
    for key in ("model.n_layer", "model.n_embd", "model.n_head", "model.n_positions", "data.vocab_size"):
        overrides = [o for o in overrides if not o.startswith(key + "=")]  # the checkpoint's own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_NO"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reviveformer",
            "train",
            str(REPO / "recipes" / "finetune-revival.yaml"),
            *overrides,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, ft, proc


def revival_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "revival/count" in r]


# ---------------------------------------------------------------------------------------------- console


LINE = re.compile(
    r"^revival (\d+) at step (\d+) \(end of epoch (\d+)\), synaptic stripping: ([\d,]+) dead units "
    r"found, ([\d,]+) weights stripped \(([\d,]+) held at zero in all\); (.*)$"
)


@pytest.mark.slow
def test_a_console_line_per_revival_with_the_logged_numbers(runs):
    _, ft, proc = runs
    events = revival_rows(rows_of(ft))
    assert len(events) == 2  # one per epoch end
    lines = [ln for ln in re.split(r"[\r\n]", proc.stderr) if ln.startswith("revival ")]
    assert len(lines) == len(events)
    for line, row in zip(lines, events, strict=True):
        m = LINE.match(line)
        assert m, line
        number, step, epoch, dead, stripped, held = (int(g.replace(",", "")) for g in m.groups()[:6])
        assert (number, step) == (row["revival/count"], row["step"])
        assert epoch == step // STEPS_PER_EPOCH
        assert (dead, stripped, held) == (
            row["revival/dead_units"],
            row["revival/stripped_now"],
            row["revival/pruned_total"],
        )
        if number == 1:
            assert m[7] == "first revival, nothing to compare with yet"
        else:
            assert m[7] == f"{int(row['revival/revived_units'])} units revived since the previous revival"
    assert events[0]["revival/dead_units"] > 0  # the run did find dead units to strip


@pytest.mark.slow
def test_summary_totals_and_dead_ratio_around_the_last_revival(runs, tmp_path):
    _, ft, proc = runs
    rows = rows_of(ft)
    events = revival_rows(rows)
    out = proc.stdout.splitlines()
    dead = sum(int(r["revival/dead_units"]) for r in events)
    stripped = sum(int(r["revival/stripped_now"]) for r in events)
    revived = sum(int(r["revival/revived_units"]) for r in events)
    assert stripped == events[-1]["revival/stripped_total"]
    assert (
        f"revival (synaptic stripping): 2 events, {dead:,} dead units found in all, {stripped:,} weights "
        f"stripped ({int(events[-1]['revival/pruned_total']):,} held at zero now), {revived:,} units revived"
    ) in out
    # before: the epoch-end measurement at the last revival's step, as logged under liveness/: the last such row
    # before the revival's own (the final measurement, after the revival, is logged at the same step after it)
    last_step = events[-1]["step"]
    revival_at = max(i for i, r in enumerate(rows) if r["step"] == last_step and "revival/count" in r)
    measured = [
        r for r in rows[:revival_at] if r["step"] == last_step and "liveness/mlp_post/dead_ratio" in r
    ][-1]
    sites = ("mlp_pre", "mlp_post", "attn_out")
    before = "  ".join(f"{s} {measured[f'liveness/{s}/dead_ratio']:.3f}" for s in sites)
    assert f"dead ratio before the last revival (step {last_step}): {before}" in out
    # after: measured again at the end; an audit of the saved final model on the same split agrees
    [after_row] = [r for r in rows if "revival/dead_ratio_after/mlp_post" in r]
    after = "  ".join(f"{s} {after_row[f'revival/dead_ratio_after/{s}']:.3f}" for s in sites)
    assert f"dead ratio after it (measured at the end): {after}" in out
    assert (
        main(["audit", str(ft / "final"), "--out", str(tmp_path / "audit"), "liveness.dead_frequency=0.05"])
        == 0
    )
    audited = json.loads((tmp_path / "audit" / "liveness.json").read_text())["sites"]["mlp_post"]
    ratio = sum(len(e["dead_units"]) for e in audited) / sum(e["units"] for e in audited)
    assert after_row["revival/dead_ratio_after/mlp_post"] == pytest.approx(ratio, abs=1e-12)
    assert f"report: {ft / 'report.html'}" in out


@pytest.mark.slow
def test_console_holds_only_our_lines(runs):
    """No third-party progress bars (`Loading weights` of the fine-tune's checkpoint, `Writing model shards` of
    final/) and no library warnings: every stderr line is one of ours."""
    _, _, proc = runs
    assert "Loading weights" not in proc.stderr and "Writing model shards" not in proc.stderr
    ours = ("GPT-2 ", "training:", "revival ", "alert dead_mlp: ")
    for line in re.split(r"[\r\n]", proc.stderr):
        if line.strip():
            assert line.startswith(ours), line
    assert "training:" in proc.stderr and "alert dead_mlp" in proc.stderr  # ours still there
    assert proc.stdout.startswith("run directory: ")


def test_redo_line_and_totals() -> None:
    metrics = {
        "revival/dormant_units": 40.0,
        "revival/dead_units": 12.0,
        "revival/revived_units": 5.0,
        "revival/reinitialised_total": 70.0,
        "revival/count": 2.0,
    }
    event = revival_event(metrics, step=60)
    assert event_line("redo", event, "end of epoch 2") == (
        "revival 2 at step 60 (end of epoch 2), ReDo: 40 dormant units "
        "re-initialised (12 dead); 5 units revived since the previous revival"
    )
    first = revival_event(
        {
            **metrics,
            "revival/count": 1.0,
            "revival/dormant_units": 30.0,
            "revival/revived_units": 0.0,
            "revival/reinitialised_total": 30.0,
        },
        step=30,
    )
    assert event_line("redo", first) == (
        "revival 1 at step 30, ReDo: 30 dormant units re-initialised (12 dead); first revival, "
        "nothing to compare with yet"
    )
    assert totals_line("redo", [first, event]) == (
        "revival (ReDo): 2 events, 70 dormant units re-initialised in all, 5 units revived"
    )
    # GraMa re-initialises too and logs the same totals: named as itself, from the run's method
    grama = revival_event({**metrics, "revival/grama_steps": 30.0}, step=60)
    assert event_line("grama", grama) == (
        "revival 2 at step 60, GraMa: 40 dormant units re-initialised (12 dead); 5 units revived since the "
        "previous revival"
    )
    assert totals_line("grama", [grama]).startswith("revival (GraMa): 1 event, 70 dormant units")
    # a plug-in with metrics of its own: the units found and revived, under its own name
    plugin = revival_event(
        {"revival/count": 1.0, "revival/dead_units": 7.0, "revival/revived_units": 0.0},
        step=9,
    )
    assert event_line("custom_reviver:BiasKick", plugin) == (
        "revival 1 at step 9, custom_reviver:BiasKick: 7 dead units found; first revival, nothing to compare with yet"
    )


# ---------------------------------------------------------------------------------------------- pages


class Page(HTMLParser):
    """Figures (id -> decoded image bytes), tables (id -> rows of cell texts), external references."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: dict[str, bytes] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self.external: list[str] = []
        self._figure = self._table = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])
        if tag == "figure":
            self._figure = a.get("id")
        elif tag == "img" and self._figure:
            assert a["src"].startswith("data:image/png;base64,")
            self.figures[self._figure] = base64.b64decode(a["src"].split(",", 1)[1])
        elif tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


RUN_FIGURES = {
    "fig-loss",
    "fig-dead-over-training",
    "fig-frequency-heatmap",
    "fig-dead-per-layer",
    "fig-histograms",
}


@pytest.mark.slow
def test_run_report_content_matches_the_run_files(runs):
    _, ft, _ = runs
    text = (ft / "report.html").read_text()
    page = Page(text)
    assert page.external == []  # self-contained: no network
    assert set(page.figures) == RUN_FIGURES | {"fig-revival-per-layer"}
    assert all(png.startswith(PNG) and len(png) > 5000 for png in page.figures.values())
    rows = rows_of(ft)
    # revival events: one table row per logged revival, same numbers
    events = revival_rows(rows)
    table = page.tables["revival-events"]
    assert table[0] == [
        "#",
        "step",
        "when",
        "dead units found",
        "weights stripped",
        "held at zero in all",
        "units revived",
    ]
    assert table[1:] == [
        [
            str(int(r["revival/count"])),
            str(r["step"]),
            f"end of epoch {r['step'] // STEPS_PER_EPOCH}",
            f"{int(r['revival/dead_units']):,}",
            f"{int(r['revival/stripped_now']):,}",
            f"{int(r['revival/pruned_total']):,}",
            f"{int(r['revival/revived_units']):,}",
        ]
        for r in events
    ]
    # alerts: every line of alerts.jsonl
    alerts = [json.loads(line) for line in (ft / "alerts.jsonl").read_text().splitlines()]
    assert alerts and [[c[0], c[3], c[5]] for c in page.tables["alerts"][1:]] == [
        [str(a["step"]), str(a["layer"]), f"{a['value']:.3f}"] for a in alerts
    ]
    # capacity: the last logged values
    last = {k: v for r in rows for k, v in r.items() if k.startswith("capacity/")}
    cap = dict(page.tables["capacity"][1:])
    assert cap["alive_units"] == f"{int(last['capacity/alive_units']):,}"
    assert cap["effective_param_fraction"] == f"{last['capacity/effective_param_fraction']:.1%}"
    # before/after the last revival
    after = {
        k.rsplit("/", 1)[1]: v
        for r in rows
        for k, v in r.items()
        if k.startswith("revival/dead_ratio_after/")
    }
    ba = {c[0]: c[1:] for c in page.tables["revival-before-after"][1:]}
    assert ba["mlp_post"] == [
        f"{events[-1]['revival/dead_ratio_before/mlp_post']:.1%}",
        f"{after['mlp_post']:.1%}",
    ]
    # settings and headline numbers
    settings = dict(page.tables["settings"][1:])
    assert (
        settings["revival.method"] == "synaptic_stripping" and settings["liveness.dead_frequency"] == "0.05"
    )
    val = [r["val/loss"] for r in rows if "val/loss" in r][-1]
    assert f"<b>{val:.4f}</b><span>final validation loss</span>" in text
    if (ft / "status.json").is_file():  # a trainer that writes status.json: the page says what it recorded
        assert "finished: it reached its planned end; last status at step 20" in text
        assert "final/ holds its weights at step 20" in text
    else:  # without one, final/ alone does not say which step it is of, nor that the run ended
        assert "final model present (no status.json" in text and "last logged step 20" in text


@pytest.mark.slow
def test_report_command_on_a_killed_run(runs, tmp_path, capsys):
    """A run cut off in its second epoch: no final/, a metrics line cut in half. The page is made from what
    is there; a path that is not a run is refused with exit status 2 and nothing written."""
    _, ft, _ = runs
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(ft / "config.yaml", killed / "config.yaml")
    shutil.copytree(
        ft / "liveness", killed / "liveness", ignore=lambda d, names: [n for n in names if "001" in n]
    )  # only epoch 0 ended
    lines = (ft / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["step"] <= 15]
    (killed / "metrics.jsonl").write_text("\n".join(kept) + "\n" + lines[len(kept)][:20])
    assert main(["report", str(killed)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {killed / 'report.html'}"
    text = (killed / "report.html").read_text()
    page = Page(text)
    assert RUN_FIGURES <= set(page.figures)
    assert "in progress or stopped: last logged step 15, no final model yet" in text
    assert len(page.tables["revival-events"]) == 2  # the header and the epoch-0 revival

    missing = tmp_path / "nothing"
    missing.mkdir()
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and "Traceback" not in err
    assert list(missing.iterdir()) == []


@pytest.mark.slow
def test_compare_page_side_by_side(runs, tmp_path, capsys):
    base, ft, _ = runs
    out = tmp_path / "cmp"
    assert main(["compare", str(base), str(ft), "--out", str(out)]) == 0
    assert f"report page: {out / 'compare.html'}" in capsys.readouterr().out
    page = Page((out / "compare.html").read_text())
    assert page.external == []
    compare_rows = json.loads((out / "compare.json").read_text())
    table = page.tables["comparison"]
    assert [r[0] for r in table[1:]] == [r["run"] for r in compare_rows] == ["base", "ft"]
    col = table[0].index("final val loss")
    assert [r[col] for r in table[1:]] == [f"{r['final_val_loss']:.4f}" for r in compare_rows]
    pngs = sorted(out.glob("*.png"))
    assert sum(k.startswith("cmp-") for k in page.figures) == len(pngs) > 0
    assert sorted(page.figures[k] for k in page.figures if k.startswith("cmp-")) == sorted(
        p.read_bytes() for p in pngs
    )
    for i in (0, 1):  # each run's own figures, one column each
        assert {f"run{i}-loss", f"run{i}-dead-over-training", f"run{i}-histograms"} <= set(page.figures)


@pytest.mark.slow
def test_rows_that_are_not_what_their_format_says_are_skipped_and_named(runs, tmp_path, capsys, caplog):
    """A hand-edited run folder: an alert whose value is text, a metrics row whose step is "NaN". `report` and
    `compare` skip each such row with one warning naming the file and line, and the page shows the rest (they
    once ended in a traceback)."""
    _, ft, _ = runs
    edited = tmp_path / "edited"
    shutil.copytree(ft, edited)
    alerts = edited / "alerts.jsonl"
    good_alerts = len(alerts.read_text().splitlines())
    assert good_alerts > 0
    with alerts.open("a") as f:
        f.write(json.dumps({"step": 3, "rule": "x", "value": "abc", "threshold": 0.3}) + "\n")
    metrics = edited / "metrics.jsonl"
    n_metrics = len(metrics.read_text().splitlines())
    with metrics.open("a") as f:
        f.write(json.dumps({"step": "NaN", "val/loss": 1.0}) + "\n")
    with caplog.at_level("WARNING", logger="reviveformer"):
        assert main(["report", str(edited)]) == 0
        assert main(["compare", str(ft), str(edited), "--out", str(tmp_path / "cmp")]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"{alerts}: skipped 1 line(s) (line {good_alerts + 1}): value 'abc' is not a number" in warnings
    assert (
        f"{metrics}: skipped 1 line(s) (line {n_metrics + 1}): step 'NaN' is not a whole number" in warnings
    )
    page = Page((edited / "report.html").read_text())
    assert len(page.tables["alerts"]) == 1 + good_alerts  # the header and the good alerts

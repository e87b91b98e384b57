"""ReviveformerCallback in a real `transformers.Trainer` on CPU: its logged numbers against an independent count
(hooks on the MLP activation, counted with numpy), the exact edits and optimizer-state resets of a ReDo revival,
alerts, and 2 processes under `accelerate launch` against 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hf_common import KILLED, N_LAYER, tiny_gpt2, trainer
from transformers import TrainerCallback

from conftest import launch, launch_findings
from reviveformer import AlertRule, make_reviver
from reviveformer.integrations.transformers import ReviveformerCallback

THRESHOLD, DEAD_FREQUENCY, TAU = 1e-3, 1e-3, 0.1


class Capture:
    """The MLP activation output of every training forward, per layer (plain forward hooks)."""

    def __init__(self, model) -> None:
        self.acts: dict[int, list[np.ndarray]] = {i: [] for i in range(N_LAYER)}
        for i, block in enumerate(model.transformer.h):
            block.mlp.act.register_forward_hook(lambda m, a, out, i=i: self._save(i, out))

    def _save(self, layer: int, out: torch.Tensor) -> None:
        self.acts[layer].append(out.detach().double().reshape(-1, out.shape[-1]).numpy().copy())

    def take(self) -> dict[int, np.ndarray]:
        got = {i: np.concatenate(a) for i, a in self.acts.items()}
        for a in self.acts.values():
            a.clear()
        return got


def expected_ratios(acts: dict[int, np.ndarray]) -> dict[str, float]:
    """Dead and dormant ratios (docs/design.md definitions) of each layer's activations, by metric key."""
    out = {}
    for i, x in acts.items():
        freq = (np.abs(x) > THRESHOLD).sum(axis=0) / x.shape[0]
        mean_abs = np.abs(x).mean(axis=0)
        score = mean_abs / mean_abs.mean()
        out[f"liveness/mlp_post/layer_{i}/dead_ratio"] = float((freq < DEAD_FREQUENCY).mean())
        out[f"liveness/mlp_post/layer_{i}/dormant_ratio"] = float((score <= TAU).mean())
    return out


class AtLog(TrainerCallback):
    """Records, at each log, the activations captured since the previous one (runs after the callback under test)."""

    def __init__(self, capture: Capture) -> None:
        self.capture, self.windows = capture, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.windows.append((dict(logs), self.capture.take()))


def test_logged_counts_equal_an_independent_count(tmp_path) -> None:
    model = tiny_gpt2()
    # evaluation forwards between steps must not count
    t = trainer(
        tmp_path, model, rows=16, batch=4, logging_steps=2, evaluate=True, eval_strategy="steps", eval_steps=2
    )
    capture = Capture(model)
    cb = ReviveformerCallback(
        liveness=None, alerts=[AlertRule(name="dead", site="mlp_post", metric="dead_ratio", above=0.001)]
    ).add_to(t)
    at_log = AtLog(capture)
    t.add_callback(at_log)
    capture_eval = []
    t.add_callback(
        type("E", (TrainerCallback,), {"on_evaluate": lambda *a, **k: capture_eval.append(capture.take())})()
    )
    t.train()
    assert len(at_log.windows) == 2 and len(capture_eval) == 2  # 4 steps, a log and an evaluation every 2
    for logs, acts in at_log.windows:
        assert all(
            a.shape[0] == 2 * 4 * 16 for a in acts.values()
        )  # 2 steps of 4 x 16 tokens, no eval tokens
        want = expected_ratios(acts)
        for key, value in want.items():
            assert logs[key] == pytest.approx(value, abs=1e-12), key
        assert logs["liveness/mlp_post/layer_0/dead_ratio"] >= len(KILLED[0]) / 256
        assert logs["alerts/dead"] == N_LAYER  # both layers have dead units: above 0.001
        units = 2 * 256
        dead = sum(round(want[f"liveness/mlp_post/layer_{i}/dead_ratio"] * 256) for i in range(N_LAYER))
        assert logs["capacity/alive_units"] == units - dead
    assert cb.last_counts.tokens["mlp_post"].tolist() == [128, 128]
    history = [h for h in t.state.log_history if "loss" in h]
    assert all("liveness/mlp_post/dead_ratio" in h for h in history)  # log_history gets them too
    # the model is left as it was given: no counting class, no probe
    assert cb.monitor is None and type(model.transformer.h[0].mlp.act) is torch.nn.ReLU


class Snapshots(TrainerCallback):
    """c_fc/c_proj weights and AdamW state at step 2: after the optimizer step (before the revival at that step's
    end) and after the step's end callbacks (the revival included; added after the callback under test)."""

    def __init__(self) -> None:
        self.before, self.after = None, None

    @staticmethod
    def _take(model, optimizer):
        opt = getattr(optimizer, "optimizer", optimizer)
        snap = {}
        for i, block in enumerate(model.transformer.h):
            for name in ("c_fc", "c_proj"):
                for pname in ("weight", "bias"):
                    p = getattr(getattr(block.mlp, name), pname)
                    st = opt.state[p]
                    snap[(i, name, pname)] = (
                        p.detach().clone(),
                        st["exp_avg"].clone(),
                        st["exp_avg_sq"].clone(),
                    )
        return snap

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 1:  # on_optimizer_step runs before global_step counts this step
            self.before = self._take(model, optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 2:
            self.after = self._take(model, optimizer)


def test_revival_edits_exactly_what_its_rule_names(tmp_path) -> None:
    model = tiny_gpt2()
    t = trainer(tmp_path, model, rows=8, batch=4, logging_steps=2)
    capture = Capture(model)
    tau = 0.5  # many live units are dormant at this tau, so their optimizer state is not already zero
    ReviveformerCallback("redo", every_steps=2, revival_options={"tau": tau}).add_to(t)
    snaps = Snapshots()
    t.add_callback(snaps)
    t.train()
    acts = capture.take()
    reset_some_state = False
    for i in range(N_LAYER):
        mean_abs = np.abs(acts[i]).mean(axis=0)
        dormant = np.flatnonzero(mean_abs / mean_abs.mean() <= tau)
        assert 0 < len(dormant) < 256
        keep = np.setdiff1d(np.arange(256), dormant)
        for pname, (w0, m0, v0) in ((k[2], v) for k, v in snaps.before.items() if k[:2] == (i, "c_fc")):
            w1, m1, v1 = snaps.after[(i, "c_fc", pname)]
            cols = (slice(None), dormant) if pname == "weight" else (dormant,)
            same = (slice(None), keep) if pname == "weight" else (keep,)
            assert (
                torch.equal(w1[same], w0[same])
                and torch.equal(m1[same], m0[same])
                and torch.equal(v1[same], v0[same])
            )
            assert not torch.count_nonzero(m1[cols]) and not torch.count_nonzero(v1[cols])
            reset_some_state |= bool(torch.count_nonzero(m0[cols]))
            if pname == "bias":
                assert not torch.count_nonzero(w1[cols])  # zero bias
            else:
                assert (w1[cols] != w0[cols]).all(dim=0).all()  # fresh incoming weights
        w0, m0, v0 = snaps.before[(i, "c_proj", "weight")]
        w1, m1, v1 = snaps.after[(i, "c_proj", "weight")]
        assert not torch.count_nonzero(w1[dormant]) and not torch.count_nonzero(m1[dormant])  # zero outgoing
        assert (
            torch.equal(w1[keep], w0[keep])
            and torch.equal(m1[keep], m0[keep])
            and torch.equal(v1[keep], v0[keep])
        )
        b0, b1 = snaps.before[(i, "c_proj", "bias")], snaps.after[(i, "c_proj", "bias")]
        assert all(torch.equal(x, y) for x, y in zip(b0, b1, strict=True))
    assert reset_some_state
    logged = [h for h in t.state.log_history if "revival/count" in h]
    assert len(logged) == 1 and logged[0]["revival/count"] == 1


def test_bad_revival_method_fails_before_training() -> None:
    with pytest.raises(ValueError, match="redo"):
        ReviveformerCallback("no_such_method")
    with pytest.raises(ValueError, match="tau"):
        ReviveformerCallback("redo", revival_options={"tua": 0.1})


def test_the_callback_refuses_what_the_cli_refuses() -> None:
    """One set of checks for the CLI, the API and the callback: a step count that is no whole number, and an
    option that is nan (it passes `tau >= 0`, and ReDo would never revive) are refused up front."""
    for every in (2.5, True, -1):
        with pytest.raises(ValueError, match=f"every_steps={every!r} must be a whole number"):
            ReviveformerCallback("redo", every_steps=every)
    with pytest.raises(ValueError, match="revival.redo.tau=nan must be a finite number"):
        ReviveformerCallback("redo", revival_options={"tau": float("nan")})
    with pytest.raises(ValueError, match="tau=inf must be a finite number"):
        make_reviver("redo", tau=float("inf"))


def test_an_event_before_train_begin_says_so() -> None:
    from transformers import TrainerControl, TrainerState

    cb = ReviveformerCallback("redo")
    for event in (cb.on_step_begin, cb.on_step_end, cb.on_pre_optimizer_step):
        with pytest.raises(RuntimeError, match="before on_train_begin"):
            event(None, TrainerState(), TrainerControl())


def test_a_failed_start_leaves_the_model_as_it_found_it() -> None:
    """Synaptic stripping on a Llama-family model is refused at the start; the monitor the callback attached
    first is detached again, so the next callback on the same model starts (once it failed: "already
    watched")."""
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState

    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=64, max_position_embeddings=32,
        )
    )  # fmt: skip
    state, control = TrainerState(), TrainerControl()
    failing = ReviveformerCallback("synaptic_stripping")
    with pytest.raises(Exception, match="(?i)strip"):
        failing.on_train_begin(None, state, control, model=model, optimizer=None)
    assert failing.monitor is None
    ok = ReviveformerCallback("redo")
    ok.on_train_begin(None, state, control, model=model, optimizer=None)
    assert ok.monitor is not None
    ok.close()


@pytest.mark.slow
def test_two_processes_log_what_one_process_logs(tmp_path) -> None:
    one = launch_findings("dist_hf_callback_script.py", tmp_path / "one.json", processes=1, timeout=240)
    two = launch_findings("dist_hf_callback_script.py", tmp_path / "two.json", processes=2, timeout=240)
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert (
        one["tokens"] == two["tokens"] == [16 * 16] * N_LAYER
    )  # every row counted once, over both processes
    assert one["fire_count"] == two["fire_count"]
    assert one["dead_ratio"] == two["dead_ratio"] > 0


def test_metrics_reach_the_trainers_wandb_run(tmp_path) -> None:
    # its own process: W&B's mode is settled per process by whichever test used it first
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    p = launch("hf_wandb_script.py", [str(tmp_path / "out.json")], processes=1, env=env, accelerate=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    found = json.loads((tmp_path / "out.json").read_text())
    history = found["history"]
    assert len(history) == 2  # 4 steps, a log every 2
    key = "liveness/mlp_post/layer_0/dead_ratio"
    # transformers' W&B integration names every key of a training log train/<key>
    rows = [r for r in found["received"] if f"train/{key}" in r]
    assert len(rows) == 2, found["received"]
    for row, logged in zip(rows, history, strict=True):
        assert row[f"train/{key}"] == logged[key] >= len(KILLED[0]) / 256
        assert row["train/capacity/alive_units"] == logged["capacity/alive_units"] < 2 * 256


RESUME_OPTIONS = {
    "redo": {"tau": TAU},
    "continual_backprop": {"replacement_rate": 0.05, "maturity_threshold": 2},
}


def run_with_checkpoints(out, method: str, resume: str | None = None):
    """8 steps (32 rows of 4), a log every 3 steps, a checkpoint every 4, a revival at step 5: the checkpoint at
    step 4 falls inside a log window and inside the revival's window."""
    model = tiny_gpt2()
    t = trainer(out, model, rows=32, batch=4, logging_steps=3, save_strategy="steps", save_steps=4)
    rule = AlertRule(name="dead", site="mlp_post", metric="dead_ratio", above=0.001)
    cb = ReviveformerCallback(
        method, every_steps=5, revival_options=RESUME_OPTIONS[method], alerts=[rule]
    ).add_to(t)
    t.train(resume_from_checkpoint=resume)
    # the Trainer's own window loss is not carried over a resume (it averages the steps since its restart),
    # nor are its timings: every other logged number is compared
    skip = {"loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
    logs = [{k: v for k, v in h.items() if k not in skip} for h in t.state.log_history]
    return model, logs, cb


@pytest.mark.parametrize("method", sorted(RESUME_OPTIONS))
def test_a_resumed_trainer_logs_and_ends_as_the_straight_run(tmp_path, method) -> None:
    """Resumed from the checkpoint of step 4, the run logs the same liveness, alert and revival numbers at
    steps 6 and 8 as the straight run (its windows began before the checkpoint) and ends with the same weights."""
    model, logs, cb = run_with_checkpoints(tmp_path, method)
    assert [h["step"] for h in logs] == [3, 6, 8]  # two logs and the end of training
    assert logs[1]["revival/count"] == 1  # the revival at step 5 was logged at step 6
    assert "liveness/mlp_post/layer_1/dormant_ratio" in logs[2]
    assert (tmp_path / "checkpoint-4" / "reviveformer").is_dir()
    resumed, resumed_logs, _ = run_with_checkpoints(tmp_path, method, resume=str(tmp_path / "checkpoint-4"))
    assert [h["step"] for h in resumed_logs] == [3, 6, 8]  # step 3's is the checkpoint's history
    assert resumed_logs == logs
    want = model.state_dict()
    for name, t in resumed.state_dict().items():
        assert torch.equal(t, want[name]), name


def test_a_checkpoint_without_callback_state_says_so_once(tmp_path, caplog) -> None:
    run_with_checkpoints(tmp_path, "redo")
    shutil.rmtree(tmp_path / "checkpoint-4" / "reviveformer")
    with caplog.at_level("WARNING", logger="reviveformer"):
        _, logs, cb = run_with_checkpoints(tmp_path, "redo", resume=str(tmp_path / "checkpoint-4"))
    said = [r.getMessage() for r in caplog.records if "no callback state" in r.getMessage()]
    assert len(said) == 1 and "checkpoint-4" in said[0] and "start clean" in said[0]
    # started clean: the log at step 6 counted steps 5 and 6 only (2 x 4 x 16 tokens per layer)
    assert cb.last_counts.tokens["mlp_post"].tolist() == [128, 128]

"""DeepFM training options TorchEasyRec users set: learning-rate schedules, several classes,
sample weights and grouped AUC — each against an independent computation."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, roc_auc_score

from fmkit.data import codecs
from fmkit.errors import DataError, HyperparameterError
from fmkit.jobs.deepfm import early_stopping_of, train_deepfm
from fmkit.logs import log
from fmkit.models import metrics
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm.model import DeepFMModel
from fmkit.train import deepfm_learner
from fmkit.train.engine import Callback


def _config(tmp_path, train: str, **sections) -> configs.EasyRecConfig:
    document = {
        "train_input_path": train, "model_dir": str(tmp_path / "model"),
        "feature_configs": [
            {"id_feature": {"feature_name": "user", "num_buckets": 20, "embedding_dim": 4}},
            {"id_feature": {"feature_name": "item", "num_buckets": 20, "embedding_dim": 4}},
        ],
        "model_config": {
            "feature_groups": [
                {"group_name": "wide", "group_type": "WIDE", "feature_names": ["user", "item"]},
                {"group_name": "deep", "feature_names": ["user", "item"]}],
            "deepfm": {"deep": {"hidden_units": [8]}, "wide_embedding_dim": 1}},
        "data_config": {"label_fields": ["label"], "with_header": True, "batch_size": 64},
        "train_config": {"num_epochs": 1},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(document.get(name), dict):
            document[name] = {**document[name], **value}
        else:
            document[name] = value
    return configs.parse(document)


def _write(path, header: str, rows) -> str:
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return str(path)


# ---- learning-rate schedules -----------------------------------------------------------------
def _exponential(base, t, decay_size, factor, staircase, warmup_lr, warmup, minimum):
    if t < warmup:
        return warmup_lr + (base - warmup_lr) * t / warmup
    p = (t - warmup) / decay_size
    return max(base * factor ** (math.floor(p) if staircase else p), minimum)


def _manual(base, t, sizes, rates, warmup):
    passed = [rate for size, rate in zip(sizes, rates) if t > size]
    if passed:
        return passed[-1]
    return base + (rates[0] - base) * t / sizes[0] if warmup else base


def _warm_restarts(base, t, first, mult, low, warmup_lr, warmup):
    if t < warmup:
        return warmup_lr + (base - warmup_lr) * t / warmup
    positions = [(step, length) for n in range(12) for length in [first * mult ** n]
                 for step in range(length)]  # every step of the periods, in order
    done, period = positions[t - warmup]
    return low + (base - low) * 0.5 * (1 + math.cos(math.pi * done / period))


class _RecordRates(Callback):
    """The rate each step ran with (read after the step, before the schedule moves on)."""

    def __init__(self, optimizer_index: int):
        self.index, self.rates = optimizer_index, []

    def after_step(self, run) -> bool:
        optimizer = run.learner.optimizers[self.index]
        self.rates.append(optimizer.param_groups[0]["lr"])
        return False


@pytest.mark.parametrize("schedule, expected", [
    ({"exponential_decay_learning_rate": {"decay_size": 3, "decay_factor": 0.5,
                                          "warmup_learning_rate": 0.001, "warmup_size": 4,
                                          "min_learning_rate": 0.002}},
     lambda t: _exponential(0.05, t, 3, 0.5, True, 0.001, 4, 0.002)),
    ({"exponential_decay_learning_rate": {"decay_size": 5, "decay_factor": 0.9,
                                          "staircase": False}},
     lambda t: _exponential(0.05, t, 5, 0.9, False, 0.0, 0, 0.0)),
    ({"manual_step_learning_rate": {"schedule_sizes": [3, 7], "learning_rates": [0.02, 0.01]}},
     lambda t: _manual(0.05, t, [3, 7], [0.02, 0.01], False)),
    ({"manual_step_learning_rate": {"schedule_sizes": [4, 9], "learning_rates": [0.1, 0.01],
                                    "warmup": True}},
     lambda t: _manual(0.05, t, [4, 9], [0.1, 0.01], True)),
    ({"cosine_annealing_learning_rate": {"T_max": 6, "min_learning_rate": 0.01}},
     lambda t: 0.01 + 0.04 * 0.5 * (1 + math.cos(math.pi * min(t, 6) / 6))),
    ({"cosine_annealing_warm_restarts_learning_rate": {"T_0": 4, "min_learning_rate": 0.01}},
     lambda t: _warm_restarts(0.05, t, 4, 1, 0.01, 0.0, 0)),
    ({"cosine_annealing_warm_restarts_learning_rate": {
        "T_0": 3, "T_mult": 2, "warmup_learning_rate": 0.001, "warmup_size": 2}},
     lambda t: _warm_restarts(0.05, t, 3, 2, 0.0, 0.001, 2)),
])
def test_learning_rate_schedules_follow_their_formulas_step_by_step(tmp_path, schedule,
                                                                    expected):
    rng = np.random.default_rng(0)
    train = _write(tmp_path / "t.csv", "user,item,label",
                   [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(640)])
    config = _config(tmp_path, train, train_config={
        "num_epochs": 2,
        "sparse_optimizer": {"adagrad_optimizer": {"lr": 0.05}, **schedule},
        "dense_optimizer": {"adam_optimizer": {"lr": 0.003}}})
    sparse, dense = _RecordRates(0), _RecordRates(1)
    train_deepfm(config, progress=False, callbacks=[sparse, dense])
    assert len(sparse.rates) == 20
    assert sparse.rates == pytest.approx([expected(t) for t in range(20)], rel=1e-12)
    assert dense.rates == [0.003] * 20  # the dense optimizer's rate is constant


def test_a_schedule_by_epoch_changes_once_per_epoch(tmp_path):
    rng = np.random.default_rng(1)
    train = _write(tmp_path / "t.csv", "user,item,label",
                   [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(128)])
    config = _config(tmp_path, train, train_config={
        "num_epochs": 3, "dense_optimizer": {
            "adam_optimizer": {"lr": 0.01},
            "exponential_decay_learning_rate": {"decay_size": 1, "decay_factor": 0.1,
                                                "by_epoch": True}}})
    dense = _RecordRates(1)
    train_deepfm(config, progress=False, callbacks=[dense])
    assert dense.rates == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])


# ---- gradient clipping -----------------------------------------------------------------------
def _dense(run) -> np.ndarray:
    """The dense parameters, flattened into one vector."""
    return np.concatenate([p.detach().numpy().ravel().astype(np.float64)
                           for p in run.learner.others])


def _tables(run) -> dict[str, np.ndarray]:
    """Every embedding table, by name."""
    return {name: p.detach().numpy().astype(np.float64).copy()
            for name, p in run.learner.net.named_parameters() if "tables." in name}


class _FirstStep(Callback):
    """What ``snapshot`` takes of the run (the dense parameters) before and after the first
    step, which ends training."""

    def __init__(self, snapshot=_dense):
        self.snapshot = snapshot

    def before_fit(self, run) -> None:
        self.before = self.snapshot(run)

    def after_step(self, run) -> bool:
        self.after = self.snapshot(run)
        return True


def _first_dense_step(tmp_path, clipping: dict | None) -> np.ndarray:
    rng = np.random.default_rng(5)
    train = _write(tmp_path / "t.csv", "user,item,label",
                   [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(64)])
    settings = {"dense_optimizer": {"sgd_optimizer": {"lr": 1.0, "momentum": 0.0}}}
    if clipping is not None:
        settings["grad_clipping"] = clipping
    config = _config(tmp_path / str(len(list(tmp_path.iterdir()))), train,
                     train_config=settings)
    step = _FirstStep()
    train_deepfm(config, progress=False, callbacks=[step])
    return step.after - step.before  # = -gradient (plain SGD, rate 1)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_grad_clipping_by_norm_scales_the_dense_gradient_to_max_gradient(tmp_path, norm_type):
    """TorchEasyRec's grad_clipping {clipping_type: norm}: the first plain-SGD step of the
    dense parameters is the unclipped one scaled to norm max_gradient (numpy's norm)."""
    free = _first_dense_step(tmp_path, None)
    limit = 0.2 * np.linalg.norm(free, norm_type)  # (well below: the clipping acts)
    clipped = _first_dense_step(tmp_path, {"clipping_type": "norm", "max_gradient": limit,
                                           "norm_type": norm_type})
    np.testing.assert_allclose(clipped, free * limit / np.linalg.norm(free, norm_type),
                               rtol=1e-4, atol=1e-7)
    # a limit above the norm leaves the step alone; so does clipping_type none (any case)
    np.testing.assert_allclose(_first_dense_step(tmp_path, {"clipping_type": "NORM",
                                                            "max_gradient": 1e6}), free,
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(_first_dense_step(tmp_path, {"clipping_type": "None"}), free,
                               rtol=1e-6, atol=1e-9)


def test_grad_clipping_by_value_clips_each_dense_gradient_value(tmp_path):
    free = _first_dense_step(tmp_path, None)
    limit = float(np.quantile(np.abs(free), 0.8))
    clipped = _first_dense_step(tmp_path, {"clipping_type": "value", "max_gradient": limit})
    np.testing.assert_allclose(clipped, np.clip(free, -limit, limit), rtol=1e-5, atol=1e-7)
    assert (np.abs(free) > limit * 1.01).sum() > 0.1 * free.size  # (the clipping acted)


def test_sparse_gradient_clipping_clips_each_bag_gradient_as_fbgemm(tmp_path):
    """sparse_optimizer {sgd_optimizer {gradient_clipping: true max_gradient: m}}: fbgemm
    clips each element of the gradient reaching an embedding bag's output (the mini-batch's
    mean loss) into [-m, m]. With m below every such element and plain SGD at rate r, a table
    row used by one row of the batch moves by exactly r * m in each coordinate (each user
    here), one used by k rows by at most k * r * m; without clipping they move far more."""
    rows = [(u, (u * 7) % 20, u % 2) for u in range(64)]
    train = _write(tmp_path / "t.csv", "user,item,label", rows)

    def first_step(name: str, clipping: dict) -> dict[str, np.ndarray]:
        (tmp_path / name).mkdir()
        config = _config(tmp_path / name, train, train_config={
            "sparse_optimizer": {"sgd_optimizer": {"lr": 100.0, **clipping}},
            "dense_optimizer": {"sgd_optimizer": {"lr": 0.0, "momentum": 0.0}}},
            feature_configs=[
                {"id_feature": {"feature_name": "user", "num_buckets": 64, "embedding_dim": 4}},
                {"id_feature": {"feature_name": "item", "num_buckets": 20, "embedding_dim": 4}}])
        step = _FirstStep(_tables)
        train_deepfm(config, progress=False, callbacks=[step])
        return {n: step.after[n] - step.before[n] for n in step.before}

    limit = 1e-6
    clipped = first_step("clipped", {"gradient_clipping": True, "max_gradient": limit})
    free = first_step("free", {})
    moves = np.concatenate([np.abs(d).ravel() for d in clipped.values()])
    assert moves.max() <= 64 * 100 * limit * (1 + 1e-3)
    user_rows = [d for d in clipped.values() if d.shape[0] >= 64]  # (the user bank's rows)
    assert user_rows, list(clipped)
    for delta in user_rows:
        np.testing.assert_allclose(np.abs(delta[:64]), 100 * limit, rtol=2e-3)
    assert max(np.abs(d).max() for d in free.values()) > 100 * 100 * limit


@pytest.mark.parametrize("clipping, problem", [
    ({"clipping_type": "global_norm"}, "clipping_type: expected norm, value or none, got "
                                       "'global_norm'"),
    ({"clipping_type": "norm", "max_gradient": 0}, "max_gradient: must be a positive number"),
    ({"clipping_type": "norm", "max_gradient": "inf"}, "max_gradient: must be a positive "
                                                       "number"),
    ({"clipping_type": "norm", "max_gradient": "nan"}, "max_gradient: expected a number, "
                                                       "got 'nan'"),
    ({"clipping_type": "norm", "norm_type": -1}, "norm_type: must be a positive number or inf"),
])
def test_bad_grad_clipping_settings_are_one_line(tmp_path, clipping, problem):
    with pytest.raises(configs.ConfigError, match="train_config.grad_clipping." + re.escape(
            problem)):
        _config(tmp_path, "t.csv", train_config={"grad_clipping": clipping})


def test_an_infinite_norm_type_is_kept_by_the_model_directory_and_the_config_forms(tmp_path):
    """norm_type: inf (the largest magnitude) survives the strict JSON of model.json and
    protobuf text, each read back by parse (model.json once stored it as null, and the
    trained model did not load)."""
    from fmkit.models.artifact import strict_json
    from fmkit.models.deepfm import prototext

    config = _config(tmp_path, "t.csv", train_config={"grad_clipping": {
        "clipping_type": "norm", "norm_type": "inf"}})
    assert config.train_config.grad_clipping.norm_type == math.inf
    stored = json.loads(strict_json(configs.to_document(config)))
    assert configs.parse(stored, saved=True).train_config.grad_clipping.norm_type == math.inf
    text = prototext.format_text(config)
    assert re.search(r"norm_type: inf\b", text)
    again = configs.parse(prototext.parse_text(text, "t.config"))
    assert again.train_config.grad_clipping.norm_type == math.inf


# ---- binary focal loss -----------------------------------------------------------------------
def test_binary_focal_loss_is_the_cross_entropy_weighted_as_torcheasyrec_weighs_it(tmp_path):
    """TorchEasyRec's BinaryFocalLoss: each row's cross entropy times alpha (1-p)^gamma (a
    positive) or (1-alpha) p^gamma (a negative), the weight held constant in the gradient:
    the loss against numpy's, and its gradient against the cross entropy's weighted by
    those numbers."""
    from fmkit.jobs.deepfm import deepfm_learner as learner_of

    rng = np.random.default_rng(6)
    train = _write(tmp_path / "t.csv", "user,item,label",
                   [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(300)])
    config = _config(tmp_path, train, model_config={
        "losses": [{"binary_focal_loss": {"gamma": 1.5, "alpha": 0.3}}]})
    model, _ = train_deepfm(config, progress=False)
    assert model.predictor_type == "binary_classifier"
    batch = next(model.read(train))
    encoded = model.features.encode(batch, labelled=True, label_mode="binary")
    y = encoded.labels.astype(np.float64)
    p = 1 / (1 + np.exp(-model.logits(batch)))
    weights = np.where(y == 1, 0.3 * (1 - p) ** 1.5, 0.7 * p ** 1.5)
    cross_entropy = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    learner = learner_of(model)
    loss, rows = learner._loss(encoded)
    assert rows == 300 and loss.item() == pytest.approx((weights * cross_entropy).sum(),
                                                        rel=1e-5)
    loss.backward()
    focal = [p.grad.clone() for p in learner.others]
    learner.focal = None  # the plain cross entropy, weighted by numpy's numbers
    for optimizer in learner.optimizers:
        optimizer.zero_grad()
    outputs = learner.net(encoded).float()
    plain = torch.nn.functional.binary_cross_entropy_with_logits(
        outputs, torch.from_numpy(encoded.labels), reduction="none")
    (plain * torch.from_numpy(weights.astype(np.float32))).sum().backward()
    for a, b in zip(focal, [p.grad for p in learner.others]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("focal", [{"gamma": -1}, {"alpha": 0}, {"alpha": 1.0}])
def test_binary_focal_loss_settings_out_of_range_are_one_line(tmp_path, focal):
    with pytest.raises(configs.ConfigError, match="binary_focal_loss: gamma must be >= 0 and "
                                                  r"alpha in \(0, 1\)"):
        _config(tmp_path, "t.csv", model_config={"losses": [{"binary_focal_loss": focal}]})


# ---- dense EMA -----------------------------------------------------------------------------
class _RecordParameters(Callback):
    """Every parameter of the network after each step (float64 copies, by name)."""

    def __init__(self):
        self.steps = []

    def after_step(self, run) -> bool:
        self.steps.append({name: p.detach().numpy().astype(np.float64).copy()
                           for name, p in run.learner.net.named_parameters()})
        return False


def _moving_average(steps: list[dict], decay: float) -> dict[str, np.ndarray]:
    """TorchEasyRec's dense EMA in plain numpy: the first step's parameters, then each
    later step's pulled in with weight 1 - decay."""
    average = dict(steps[0])
    for step in steps[1:]:
        average = {name: decay * average[name] + (1 - decay) * step[name] for name in average}
    return average


def _ema_run(tmp_path, name: str, decay: float, epochs: int = 2, **sections):
    rng = np.random.default_rng(8)
    rows = [(u, i, int(rng.random() < (0.8 if (u + i) % 3 == 0 else 0.3)))
            for u, i in rng.integers(20, size=(640, 2))]
    train = _write(tmp_path / "t.csv", "user,item,label", rows[:512])
    valid = _write(tmp_path / "v.csv", "user,item,label", rows[512:])
    (tmp_path / name).mkdir()
    train_config = {"num_epochs": epochs, "dense_optimizer": {
        "adam_optimizer": {"lr": 0.05}, "ema": {"decay": decay}}}
    config = _config(tmp_path / name, train, train_config=train_config, **sections)
    record = _RecordParameters()
    train_deepfm(config, progress=False, callbacks=[record], validation_path=valid)
    written = DeepFMModel.load(config.model_dir)
    return record.steps, written, valid


def _is_dense(name: str) -> bool:
    return "tables." not in name


def test_dense_ema_writes_the_average_of_the_dense_parameters_and_the_last_tables(tmp_path):
    """train_config.dense_optimizer.ema {decay}: the written model's dense parameters are
    the moving average of their values after each step (numpy's, from a record of every
    step), its embedding tables their last values; with export_config.use_dense_ema false
    it is the last step's network."""
    steps, written, _ = _ema_run(tmp_path, "ema", 0.8, epochs=1)
    assert len(steps) == 8  # 512 rows in batches of 64
    average, last = _moving_average(steps, 0.8), steps[-1]
    weights = {name: p.detach().numpy() for name, p in written.net.named_parameters()}
    for name, value in weights.items():
        expected = average[name] if _is_dense(name) else last[name]
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7, err_msg=name)
    dense = [name for name in weights if _is_dense(name)]
    assert any(not np.allclose(average[name], last[name], atol=1e-4) for name in dense)
    steps, written, _ = _ema_run(tmp_path, "raw", 0.8, epochs=1,
                                 export_config={"use_dense_ema": False})
    for name, p in written.net.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), steps[-1][name], rtol=1e-6, atol=1e-8,
                                   err_msg=name)


def test_dense_ema_validation_scores_the_average_and_keeps_the_best_in_the_written_form(
        tmp_path):
    """Validation (eval_config.use_dense_ema, on by default with ema) scores the averaged
    network — each epoch's AUC and log loss equal scikit-learn's on the scores of the
    network with numpy's average put in — while the model written holds the raw weights of
    the best epoch when export_config.use_dense_ema is false."""
    from sklearn.metrics import log_loss as sk_log_loss

    steps, written, valid = _ema_run(tmp_path, "run", 0.5,
                                     export_config={"use_dense_ema": False})
    history = json.loads((tmp_path / "run" / "model" / "metrics.json").read_text())["train"]
    probe = DeepFMModel.load(tmp_path / "run" / "model")
    batch = next(probe.read(valid))
    labels = probe.features.encode(batch, labelled=True, label_mode="binary").labels
    measured = []
    for epoch, stats in enumerate(history, 1):
        at = steps[:8 * epoch]
        average = _moving_average(at, 0.5)
        state = {name: torch.from_numpy((average[name] if _is_dense(name) else at[-1][name])
                                        .astype(np.float32)) for name in average}
        probe.net.load_state_dict(state, strict=False)
        p = 1 / (1 + np.exp(-probe.logits(batch).astype(np.float64)))
        assert stats["validation"]["auc"] == pytest.approx(roc_auc_score(labels, p), abs=1e-6)
        assert stats["validation"]["binary_classification_cross_entropy"] == pytest.approx(
            sk_log_loss(labels, p), rel=1e-5)
        measured.append(stats["validation"]["auc"])
        raw = {name: torch.from_numpy(v.astype(np.float32)) for name, v in at[-1].items()}
        probe.net.load_state_dict(raw, strict=False)
        p_raw = 1 / (1 + np.exp(-probe.logits(batch).astype(np.float64)))
        assert abs(roc_auc_score(labels, p_raw) - roc_auc_score(labels, p)) > 1e-4
    best = steps[8 * int(np.argmax(measured)) + 7]
    for name, p in written.net.named_parameters():
        np.testing.assert_allclose(p.detach().numpy(), best[name], rtol=1e-6, atol=1e-8,
                                   err_msg=name)


@pytest.mark.parametrize("sections, problem", [
    ({"train_config": {"dense_optimizer": {"adam_optimizer": {}, "ema": {"decay": 1.5}}}},
     "train_config.dense_optimizer.ema.decay: must be in [0, 1], got 1.5"),
    ({"eval_config": {"use_dense_ema": True}},
     "eval_config.use_dense_ema: training keeps no average of the dense parameters"),
    ({"export_config": {"use_dense_ema": True}},
     "export_config.use_dense_ema: training keeps no average of the dense parameters"),
])
def test_bad_dense_ema_settings_are_one_line(tmp_path, sections, problem):
    with pytest.raises(configs.ConfigError, match=re.escape(problem)):
        _config(tmp_path, "t.csv", **sections)


# ---- gradient accumulation -------------------------------------------------------------------
def _dense_after(tmp_path, name: str, batch: int, dense_lr: float, sparse_lr: float,
                 accumulation: int, record: Callback | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(10)
    train = _write(tmp_path / "t.csv", "user,item,label",
                   [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(128)])
    (tmp_path / name).mkdir()
    config = _config(tmp_path / name, train, data_config={"batch_size": batch},
                     train_config={
        "num_epochs": 2, "gradient_accumulation_steps": accumulation,
        "sparse_optimizer": {"sgd_optimizer": {"lr": sparse_lr}},
        "dense_optimizer": {"sgd_optimizer": {"lr": dense_lr, "momentum": 0.0}}})
    model, _ = train_deepfm(config, progress=False, callbacks=[record] if record else [])
    return {name: p.detach().numpy() for name, p in model.net.named_parameters()}


def test_gradient_accumulation_steps_the_dense_optimizer_on_summed_gradients(tmp_path):
    """TorchEasyRec's gradient_accumulation_steps: 2 batches of 32 with the dense SGD at rate
    r (tables held still, sparse rate 0) step as one batch of 64 at 2r: the sum of two means
    is twice the mean of their rows. The embedding tables still step every batch, the dense
    parameters only every second one."""
    accumulated = _dense_after(tmp_path, "a", 32, 0.05, 0.0, 2)
    whole = _dense_after(tmp_path, "b", 64, 0.1, 0.0, 0)
    for name, value in whole.items():
        np.testing.assert_allclose(accumulated[name], value, rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    once = _dense_after(tmp_path, "c", 32, 0.05, 0.0, 0)  # (without: another model)
    assert not all(np.allclose(once[n], whole[n], atol=1e-5) for n in whole)
    record = _RecordParameters()
    _dense_after(tmp_path, "d", 32, 0.05, 0.05, 2, record)
    first, second, third = record.steps[:3]
    for name in first:
        moved = [not np.array_equal(a[name], b[name]) for a, b in ((first, second),
                                                                  (second, third))]
        assert moved == ([True, True] if "tables." in name else [True, False]), name


def test_eval_config_num_steps_limits_validation_as_the_test(tmp_path):
    """eval_config.num_steps batches of eval_batch_size rows: TorchEasyRec's evaluation
    during training reads that many, so every epoch's validation does, as the test after
    training did already; the figures are scikit-learn's on the written model's scores of
    those first rows (the best epoch's weights: the last measurement's here, one epoch)."""
    rng = np.random.default_rng(11)
    rows = [(u, i, int(rng.random() < (0.8 if (u + i) % 3 == 0 else 0.3)))
            for u, i in rng.integers(20, size=(700, 2))]
    train = _write(tmp_path / "t.csv", "user,item,label", rows[:400])
    valid = _write(tmp_path / "v.csv", "user,item,label", rows[400:])
    config = _config(tmp_path, train, eval_input_path=valid,
                     data_config={"eval_batch_size": 50},
                     eval_config={"num_steps": 2},
                     train_config={"num_epochs": 1, "early_stopping_patience": 2})
    _, metrics = train_deepfm(config, progress=False)
    written = DeepFMModel.load(config.model_dir)
    batch = next(written.read(valid))
    labels = written.features.encode(batch, labelled=True, label_mode="binary").labels[:100]
    expected = roc_auc_score(labels, written.logits(batch)[:100])
    validation, test = metrics["train"][0]["validation"], metrics["test"]
    assert validation["rows"] == test["rows"] == 100
    assert validation["auc"] == pytest.approx(expected, abs=1e-9)
    assert test["auc"] == pytest.approx(expected, abs=1e-9)


def test_the_best_exporter_writes_the_best_epochs_model(tmp_path):
    """export_config {exporter_type: best, best_exporter_metric: auc}: eval_input_path is
    scored after every epoch and the model written is the best epoch's — the weights of a run
    stopped at that epoch — its AUC scikit-learn's of its scores (noisy labels, a large rate:
    the AUC peaks before the last epoch)."""
    rng = np.random.default_rng(12)
    rows = [(u, i, int(rng.random() < (0.7 if (u + i) % 2 == 0 else 0.3)))
            for u, i in rng.integers(20, size=(500, 2))]
    train = _write(tmp_path / "t.csv", "user,item,label", rows[:300])
    valid = _write(tmp_path / "v.csv", "user,item,label", rows[300:])
    settings = {"sparse_optimizer": {"adagrad_optimizer": {"lr": 0.5}},
                "dense_optimizer": {"adam_optimizer": {"lr": 0.05}}}
    (tmp_path / "best").mkdir()
    config = _config(tmp_path / "best", train, eval_input_path=valid,
                     train_config={"num_epochs": 8, **settings},
                     export_config={"exporter_type": "best", "best_exporter_metric": "auc"})
    _, metrics = train_deepfm(config, progress=False)
    aucs = [h["validation"]["auc"] for h in metrics["train"]]
    best = int(np.argmax(aucs)) + 1
    assert best < 8, aucs  # (else the test shows nothing)
    written = DeepFMModel.load(config.model_dir)
    batch = next(written.read(valid))
    labels = written.features.encode(batch, labelled=True, label_mode="binary").labels
    assert roc_auc_score(labels, written.logits(batch)) == pytest.approx(max(aucs), abs=1e-9)
    (tmp_path / "short").mkdir()
    short = _config(tmp_path / "short", train, train_config={"num_epochs": best, **settings})
    stopped, _ = train_deepfm(short, progress=False)
    for (name, a), b in zip(written.net.state_dict().items(),
                            stopped.net.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("export, train, problem", [
    ({"best_exporter_metric": "xauc"}, {}, "export_config.best_exporter_metric: 'xauc' is not "
                                           "one fmkit keeps the best model by"),
    ({"metric_larger_is_better": False}, {}, "export_config.metric_larger_is_better: auc is "
                                             "better larger"),
    ({}, {"early_stopping_metric": "logloss"}, "train_config.early_stopping_metric: 'logloss' "
                                               "differs from export_config.best_exporter_metric"),
])
def test_best_exporter_settings_that_contradict_are_one_line(tmp_path, export, train, problem):
    config = _config(tmp_path, "t.csv", eval_input_path="v.csv", train_config=train,
                     export_config={"exporter_type": "best", **export})
    with pytest.raises(configs.ConfigError, match=re.escape(problem)):
        early_stopping_of(config, DeepFMModel.create(config))


# ---- starting from a model's weights ---------------------------------------------------------
class _StartingWeights(Callback):
    def before_fit(self, run) -> None:
        self.weights = [p.detach().numpy().copy() for p in run.learner.net.state_dict().values()]


def test_fine_tune_checkpoint_starts_from_the_models_weights_whatever_its_dropout(tmp_path):
    """train_config.fine_tune_checkpoint: training starts from the named model's weights
    (read back from its directory), layer by layer — also when this configuration drops the
    dropout layer the model trained with, which shifts the layers' numbers; a network of
    another shape, or with a layer moved from deep to final, is one line naming the layer."""
    rng = np.random.default_rng(9)
    train = _write(tmp_path / "t.csv", "user,item,label",
                   [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(256)])
    (tmp_path / "a").mkdir()
    trained = _config(tmp_path / "a", train, model_config={"deepfm": {
        "deep": {"hidden_units": [8, 4], "dropout_ratio": [0.3, 0.3]},
        "wide_embedding_dim": 1}})
    train_deepfm(trained, progress=False)
    source = DeepFMModel.load(trained.model_dir)
    (tmp_path / "b").mkdir()
    tuned = _config(tmp_path / "b", train, train_config={
        "num_epochs": 1, "fine_tune_checkpoint": str(tmp_path / "a" / "model")},
        model_config={"deepfm": {"deep": {"hidden_units": [8, 4]}, "wide_embedding_dim": 1}})
    start = _StartingWeights()
    _, metrics = train_deepfm(tuned, progress=False, callbacks=[start])
    expected = [v.numpy() for v in source.net.state_dict().values()]
    assert len(start.weights) == len(expected)
    for got, want in zip(start.weights, expected):
        np.testing.assert_array_equal(got, want)
    assert [h["epoch"] for h in metrics["train"]] == [1, 2]  # numbered after the model's
    (tmp_path / "c").mkdir()
    wider = _config(tmp_path / "c", train, train_config={
        "fine_tune_checkpoint": str(tmp_path / "a" / "model")}, model_config={
        "deepfm": {"deep": {"hidden_units": [16, 4]}, "wide_embedding_dim": 1}})
    with pytest.raises(HyperparameterError, match=r"train_config.fine_tune_checkpoint .*: the "
                       r"model's model_config differ from this configuration's in the "
                       r"network's layers: deep.0.weight is 8x8 there, 16x8 here"):
        train_deepfm(wider, progress=False)
    assert not (tmp_path / "c" / "model").exists()
    moved = _config(tmp_path / "c", train, train_config={
        "fine_tune_checkpoint": str(tmp_path / "a" / "model")}, model_config={
        "deepfm": {"deep": {"hidden_units": [8]}, "final": {"hidden_units": [4]},
                   "wide_embedding_dim": 1}})  # (the same shapes in the same order)
    with pytest.raises(HyperparameterError, match=r"in the network's layers: final.0.weight "
                       r"here, where the model has a deep.weight layer"):
        train_deepfm(moved, progress=False)


# ---- several classes -------------------------------------------------------------------------
def test_three_classes_reach_the_planted_oracle_accuracy(tmp_path):
    """Labels drawn from softmax(U[user] + I[item]) over 3 classes; the oracle predicts the
    argmax of the planted probabilities. The model must come within 0.03 of its accuracy."""
    rng = np.random.default_rng(3)
    U, V = rng.normal(0, 1.5, (20, 3)), rng.normal(0, 1.5, (20, 3))

    def draw(n):
        users, items = rng.integers(20, size=n), rng.integers(20, size=n)
        p = metrics.softmax(U[users] + V[items])
        labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
        return users, items, labels, p

    train = _write(tmp_path / "t.csv", "user,item,label", zip(*draw(20000)[:3]))
    users, items, labels, p = draw(5000)
    test = _write(tmp_path / "e.csv", "user,item,label", zip(users, items, labels))
    config = _config(tmp_path, train, eval_input_path=test, model_config={
        "num_class": 3, "losses": [{"softmax_cross_entropy": {}}]},
        train_config={"num_epochs": 4, "sparse_optimizer": {"adagrad_optimizer": {"lr": 0.1}},
                      "dense_optimizer": {"adam_optimizer": {"lr": 0.01}}})
    model, result = train_deepfm(config, progress=False)
    oracle = accuracy_score(labels, p.argmax(axis=1))
    assert result["test"]["multiclass_accuracy"] >= oracle - 0.03, (result["test"], oracle)
    # the same figure from the predictions, by scikit-learn
    batch = next(model.read(test))
    predicted = model.predictions(batch)
    assert predicted["score"].shape == (5000, 3)
    np.testing.assert_allclose(predicted["score"].sum(axis=1), 1.0, rtol=1e-9)
    assert accuracy_score(labels, predicted["predicted_label"]) == pytest.approx(
        result["test"]["multiclass_accuracy"])
    assert log_loss(labels, predicted["score"]) == pytest.approx(
        result["test"]["multiclass_cross_entropy"], rel=1e-6)
    # served: JSON rows and SageMaker recordIO Records (read by the SageMaker SDK)
    first = {name: values[:3] for name, values in predicted.items()}
    answer = json.loads(codecs.encode_response(first, codecs.JSON))["predictions"]
    assert [row["predicted_label"] for row in answer] == list(first["predicted_label"])
    np.testing.assert_allclose([row["score"] for row in answer], first["score"])
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    from sagemaker.amazon.common import read_records

    records = read_records(io.BytesIO(codecs.encode_response(first, codecs.RECORDIO)))
    np.testing.assert_allclose([list(r.label["score"].float32_tensor.values) for r in records],
                               first["score"], rtol=1e-6)
    assert [r.label["predicted_label"].float32_tensor.values[0] for r in records] == list(
        first["predicted_label"])


# ---- sample weights --------------------------------------------------------------------------
def test_a_weighted_run_equals_the_run_on_rows_repeated_by_their_weights(tmp_path):
    rng = np.random.default_rng(4)
    rows = [(rng.integers(20), rng.integers(20), rng.integers(2), rng.integers(1, 4))
            for _ in range(300)]
    weighted = _write(tmp_path / "w.csv", "user,item,label,w", rows)
    repeated = _write(tmp_path / "r.csv", "user,item,label,w",
                      [r for r in rows for _ in range(r[3])])
    test = _write(tmp_path / "e.csv", "user,item,label,w",
                  [(u, i, 0, 1) for u in range(20) for i in range(20)])
    common = {"train_config": {"num_epochs": 3}, "data_config": {
        "label_fields": ["label"], "with_header": True, "batch_size": 1000}}  # one batch
    one = _config(tmp_path / "a", weighted, data_config={**common["data_config"],
                                                        "sample_weight_fields": ["w"]},
                  train_config=common["train_config"])
    two = _config(tmp_path / "b", repeated, **common)
    model_one, _ = train_deepfm(one, progress=False)
    model_two, _ = train_deepfm(two, progress=False)
    batch = next(model_one.read(test))
    np.testing.assert_allclose(model_one.logits(batch), model_two.logits(batch), rtol=1e-4,
                               atol=1e-6)


def test_drop_remainder_trains_as_if_the_last_smaller_batch_were_not_there(tmp_path):
    """TorchEasyRec's data_config.drop_remainder (accepted and ignored before): 300 rows in
    batches of 64 train as their first 256 rows do, over 3 epochs (unshuffled, so the same
    batches); without it the last 44 rows count."""
    rng = np.random.default_rng(6)
    rows = [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(300)]
    every = _write(tmp_path / "all.csv", "user,item,label", rows)
    first = _write(tmp_path / "first.csv", "user,item,label", rows[:256])
    test = _write(tmp_path / "e.csv", "user,item,label",
                  [(u, i, 0) for u in range(20) for i in range(20)])
    data = {"label_fields": ["label"], "with_header": True, "batch_size": 64}
    epochs = {"num_epochs": 3}
    dropped, _ = train_deepfm(_config(tmp_path / "a", every, train_config=epochs,
                                      data_config={**data, "drop_remainder": True}),
                              progress=False)
    short, _ = train_deepfm(_config(tmp_path / "b", first, train_config=epochs), progress=False)
    kept, _ = train_deepfm(_config(tmp_path / "c", every, train_config=epochs), progress=False)
    batch = next(dropped.read(test))
    np.testing.assert_array_equal(dropped.logits(batch), short.logits(batch))
    assert not np.allclose(kept.logits(batch), short.logits(batch))
    with pytest.raises(DataError, match=r"all.csv: fewer rows than data_config.batch_size "
                                        r"\(512\): drop_remainder leaves no batch to train"):
        train_deepfm(_config(tmp_path / "d", every, data_config={
            **data, "batch_size": 512, "drop_remainder": True}), progress=False)


def test_weighted_metrics_equal_scikit_learns():
    rng = np.random.default_rng(5)
    y, z, w = rng.integers(2, size=500), rng.normal(size=500), rng.integers(0, 4, size=500)
    p = 1 / (1 + np.exp(-z))
    found = metrics.compute_metrics("binary_classifier", y, z, w.astype(float))
    assert found["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w))
    assert found["binary_classification_cross_entropy"] == pytest.approx(
        log_loss(y, p, sample_weight=w))
    assert found["binary_classification_accuracy"] == pytest.approx(
        accuracy_score(y, p >= 0.5, sample_weight=w))
    found = metrics.compute_metrics("regressor", z, z + y, w.astype(float))
    assert found["rmse"] == pytest.approx(math.sqrt(mean_squared_error(z, z + y,
                                                                       sample_weight=w)))


@pytest.mark.parametrize("row, problem", [
    ((3, 4, 0, -2), "sample weight column 'w': -2 is not a finite number >= 0"),
    ((3, 4, 0, "nan"), "sample weight column 'w': nan is not a finite number >= 0"),
    ((3, 4, 0, ""), "sample weight column 'w': is empty"),  # (it said "nan is not ...")
    ((3, 4, "", 1), "label column 'label' is empty"),
    ((3, 4, "nan", 1), "label column 'label' is nan"),  # (it said "is empty")
])
def test_sample_weights_and_labels_must_be_numbers(tmp_path, row, problem):
    train = _write(tmp_path / "t.csv", "user,item,label,w", [(1, 2, 1, 1), row])
    config = _config(tmp_path, train, data_config={
        "label_fields": ["label"], "with_header": True, "sample_weight_fields": ["w"]})
    with pytest.raises(Exception, match=rf"t\.csv:3: {re.escape(problem)}"):
        train_deepfm(config, progress=False)


# ---- grouped AUC -----------------------------------------------------------------------------
def test_normalized_entropy_is_the_log_loss_over_the_base_rates(tmp_path):
    """metrics { normalized_entropy {} } (torchrec's NE): the weighted log loss over the log
    loss of always predicting the weighted positive rate, both scikit-learn's; a model that
    is not a binary classifier refuses it."""
    rng = np.random.default_rng(13)
    rows = [(u, i, int(rng.random() < (0.7 if (u + i) % 3 == 0 else 0.2)), rng.integers(1, 4))
            for u, i in rng.integers(20, size=(400, 2))]
    train = _write(tmp_path / "t.csv", "user,item,label,w", rows)
    config = _config(tmp_path, train, eval_input_path=train,
                     model_config={"metrics": [{"normalized_entropy": {}}, {"auc": {}}]},
                     data_config={"sample_weight_fields": ["w"]})
    _, metrics = train_deepfm(config, progress=False)
    written = DeepFMModel.load(config.model_dir)
    batch = next(written.read(train))
    encoded = written.features.encode(batch, labelled=True, label_mode="binary")
    y, w = encoded.labels, encoded.weights
    p = 1 / (1 + np.exp(-written.logits(batch).astype(np.float64)))
    rate = np.average(y, weights=w)
    expected = log_loss(y, p, sample_weight=w) / log_loss(y, np.full(y.size, rate),
                                                          sample_weight=w)
    assert metrics["test"]["normalized_entropy"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(configs.ConfigError, match="normalized_entropy: needs a binary"):
        _config(tmp_path, train, model_config={"metrics": [{"normalized_entropy": {}}],
                                               "losses": [{"l2_loss": {}}]})


def _grouped_auc_by_loop(y, scores, groups) -> float:
    values = []
    for group in sorted(set(groups)):
        mine = [i for i, g in enumerate(groups) if g == group]
        labels = [y[i] for i in mine]
        if 0 < sum(labels) < len(labels):
            values.append(roc_auc_score(labels, [scores[i] for i in mine]))
    return sum(values) / len(values)


def test_grouped_auc_equals_a_loop_over_scikit_learn(tmp_path):
    rng = np.random.default_rng(6)
    y, s, g = rng.integers(2, size=400), rng.normal(size=400), rng.integers(30, size=400)
    s = np.round(s, 1)  # ties
    assert metrics.grouped_auc(y, s, g) == pytest.approx(_grouped_auc_by_loop(y, s, g))

    rows = [(rng.integers(20), rng.integers(20), rng.integers(2)) for _ in range(2000)]
    train = _write(tmp_path / "t.csv", "user,item,label", rows)
    config = _config(tmp_path, train, eval_input_path=train, model_config={
        "metrics": [{"auc": {}}, {"grouped_auc": {"grouping_key": "user"}}]})
    model, result = train_deepfm(config, progress=False)
    scores = model.predictions(next(model.read(train)))["score"]
    expected = _grouped_auc_by_loop([r[2] for r in rows], list(scores), [r[0] for r in rows])
    assert result["test"]["grouped_auc_user"] == pytest.approx(expected, rel=1e-9)


# ---- optimizers ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind, settings", [
    ("adadelta_optimizer", "Adadelta", {"lr": 0.5, "rho": 0.8}),
    ("rmsprop_optimizer", "RMSprop", {"lr": 0.01, "alpha": 0.9, "centered": True}),
    ("sgd_optimizer", "SGD", {"lr": 0.1}),
])
def test_dense_optimizers_torcheasyrec_names_are_pytorchs(name, kind, settings):
    import torch

    from fmkit.train.deepfm_learner import dense_optimizer

    document = {"feature_configs": [], "model_config": {"feature_groups": [], "deepfm": {
        "deep": {"hidden_units": [1]}}}, "train_config": {"dense_optimizer": {name: settings}}}
    message = configs.parse(document).train_config.dense_optimizer
    optimizer = dense_optimizer([torch.nn.Parameter(torch.zeros(2))], message)
    assert type(optimizer).__name__ == kind
    group = optimizer.param_groups[0]
    for key, value in settings.items():
        assert group[key] == value
    if kind == "SGD":
        assert group["momentum"] == 0.9  # TorchEasyRec's default for dense SGD


def test_sparse_optimizers_pytorch_cannot_run_sparse_are_refused_with_the_alternatives():
    document = {"feature_configs": [], "model_config": {"feature_groups": [], "deepfm": {
        "deep": {"hidden_units": [1]}}}, "train_config": {"sparse_optimizer": {
            "lamb_optimizer": {"lr": 0.1}}}}
    with pytest.raises(configs.ConfigError, match=r"train_config\.sparse_optimizer\."
                                                  r"lamb_optimizer: not supported.*adagrad"):
        configs.parse(document)


# ---- inputs the deep network cannot take as they are -------------------------------------------
def test_large_raw_inputs_without_a_normalizer_are_warned_about_once(tmp_path, caplog):
    """TorchEasyRec's Criteo configs feed counts raw (their data is log-transformed first): on
    untransformed counts the MLP saturates silently. One warning line names each raw feature
    without a normalizer whose values reach 1000, with the largest value, once per process."""
    import logging

    from fmkit.models.deepfm import features

    rng = np.random.default_rng(5)
    rows = [(rng.integers(20), rng.integers(20), rng.integers(0, 5000), rng.integers(0, 5000),
             rng.random(), rng.integers(2)) for _ in range(300)]
    train = _write(tmp_path / "t.csv", "user,item,clicks,views,share,label", rows)
    raws = [{"raw_feature": {"feature_name": "clicks"}},
            {"raw_feature": {"feature_name": "views", "normalizer": "log1p"}},
            {"raw_feature": {"feature_name": "share"}}]
    config = _config(tmp_path, train, train_config={"num_epochs": 2}, feature_configs=[
        {"id_feature": {"feature_name": "user", "num_buckets": 20, "embedding_dim": 4}},
        {"id_feature": {"feature_name": "item", "num_buckets": 20, "embedding_dim": 4}}, *raws],
        model_config={"feature_groups": [
            {"group_name": "wide", "group_type": "WIDE", "feature_names": ["user", "item"]},
            {"group_name": "fm", "feature_names": ["user", "item"]},
            {"group_name": "deep",
             "feature_names": ["user", "item", "clicks", "views", "share"]}],
            "deepfm": {"deep": {"hidden_units": [8]}, "wide_embedding_dim": 1}})
    features._WARNED.clear()  # once per process: this test may not be the first to warn
    caplog.set_level(logging.WARNING, logger="fmkit")
    train_deepfm(config, progress=False)
    warnings = [r.getMessage() for r in caplog.records if "normalizer" in r.getMessage()]
    largest = max(r[2] for r in rows)
    assert len(warnings) == 1, warnings  # two epochs, one line
    assert f"clicks ({largest})" in warnings[0]
    assert "views" not in warnings[0] and "share" not in warnings[0]


# ---- mixed precision -------------------------------------------------------------------------
class _LinearDtypes(Callback):
    """The dtypes the network's linear layers computed in during training (hooked before the
    first step)."""

    def __init__(self):
        self.dtypes: set[torch.dtype] = set()

    def before_fit(self, run) -> None:
        for module in run.learner.net.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype))


def test_bf16_mixed_precision_runs_the_linear_layers_in_bfloat16_and_learns_as_float32(
        tmp_path, monkeypatch):
    """train_config.mixed_precision: BF16 (TorchEasyRec's field) computes the network's linear
    layers in bfloat16 while its weights stay float32 (on a CPU with bfloat16 instructions:
    the test says this one has them, so PyTorch emulates them here if need be); on labels
    drawn from a planted sigmoid(U[user] + V[item]) both runs come within 0.02 of the
    oracle's test AUC (scikit-learn) and within 0.005 of each other. FP16 is refused in one
    line."""
    monkeypatch.setattr(deepfm_learner, "computes_bfloat16", lambda device: True)
    rng = np.random.default_rng(5)
    U, V = rng.normal(0, 1.0, 20), rng.normal(0, 1.0, 20)

    def draw(n):
        users, items = rng.integers(20, size=n), rng.integers(20, size=n)
        p = 1 / (1 + np.exp(-(U[users] + V[items])))
        return users, items, (rng.random(n) < p).astype(int), p

    train = _write(tmp_path / "t.csv", "user,item,label", zip(*draw(20000)[:3]))
    users, items, labels, p = draw(4000)
    test = _write(tmp_path / "e.csv", "user,item,label", zip(users, items, labels))
    oracle = roc_auc_score(labels, p)
    aucs = {}
    for precision in ("", "BF16"):
        config = _config(tmp_path / (precision or "fp32"), train, train_config={
            "num_epochs": 2, "mixed_precision": precision,
            "sparse_optimizer": {"adagrad_optimizer": {"lr": 0.1}},
            "dense_optimizer": {"adam_optimizer": {"lr": 0.01}}})
        seen = _LinearDtypes()
        model, _ = train_deepfm(config, progress=False, callbacks=[seen])
        assert seen.dtypes == {torch.bfloat16 if precision else torch.float32}
        assert {p.dtype for p in model.net.parameters()} == {torch.float32}
        aucs[precision] = roc_auc_score(labels, model.predictions(next(model.read(test)))["score"])
    assert min(aucs.values()) >= oracle - 0.02, (aucs, oracle)
    assert abs(aucs["BF16"] - aucs[""]) <= 0.005, aucs
    with pytest.raises(configs.ConfigError, match=r"^train_config\.mixed_precision: expected "
                                                  r"BF16 .* got 'FP16'"):
        _config(tmp_path, train, train_config={"mixed_precision": "FP16"})
    with pytest.raises(configs.ConfigError, match=r"^export_config\.mixed_precision: expected "
                                                  r"BF16 .* got 'FP16'"):
        _config(tmp_path, train, export_config={"mixed_precision": "FP16"})
    # a float32 model exported in BF16 keeps the setting in its directory (and scores so)
    config = _config(tmp_path / "exported", train, train_config={"num_epochs": 1},
                     export_config={"mixed_precision": "BF16", "cudnn_allow_tf32": True})
    train_deepfm(config, progress=False)
    loaded = DeepFMModel.load(config.model_dir)
    assert loaded.config.export_config.mixed_precision == "BF16"
    assert loaded.config.train_config.mixed_precision == ""


def test_bf16_mixed_precision_trains_in_float32_without_bfloat16_instructions(
        tmp_path, monkeypatch, caplog):
    """Emulated bfloat16 trained 17 times slower than float32: without the instructions a
    BF16 config trains its linear layers in float32 and the log says so once."""
    monkeypatch.setattr(deepfm_learner, "computes_bfloat16", lambda device: False)
    rows = [(u, i, (u + i) % 2) for u in range(10) for i in range(10)]
    train = _write(tmp_path / "t.csv", "user,item,label", rows)
    config = _config(tmp_path / "bf16", train, train_config={"num_epochs": 1,
                                                              "mixed_precision": "BF16"})
    seen = _LinearDtypes()
    with caplog.at_level(logging.WARNING, logger=log.name):
        train_deepfm(config, progress=False, callbacks=[seen])
    assert seen.dtypes == {torch.float32}
    said = [r.getMessage() for r in caplog.records if "mixed_precision" in r.getMessage()]
    assert len(said) == 1 and "trains in float32" in said[0], said

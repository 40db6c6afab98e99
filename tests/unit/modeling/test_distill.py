"""Distillation on tiny models: fewer parameters, a falling loss, retention from real evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tinymodels import tiny_turns, write_tiny_causal_lm, write_tiny_classifier

from chatforge.metrics import retention
from chatforge.modeling.distill import (
    CompressError,
    build_student,
    distill,
    pick_layers,
)
from chatforge.modeling.short_train import kd_loss
from chatforge.params import DistillParams
from chatforge.runtime.folder import ModelFolderError, open_folder

torch.set_num_threads(1)
FAST = {"bleu_samples": 2, "max_new_tokens": 4, "latency_requests": 2, "eval_max_conversations": 8, "student_layers": None}


def test_picked_layers_are_evenly_spaced_with_first_and_last() -> None:
    assert pick_layers(12, 4) == [0, 4, 7, 11]
    assert pick_layers(30, 15)[0] == 0 and pick_layers(30, 15)[-1] == 29
    with pytest.raises(CompressError, match="distill.student_layers"):
        pick_layers(4, 5)


def test_student_copies_the_teacher_layers(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(write_tiny_causal_lm(tmp_path / "t", layers=4))
    student = build_student(teacher, student_layers=2)
    assert student.config.num_hidden_layers == 2
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)


def test_kd_loss_matches_the_formula() -> None:
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.5, 1.5, 0.0]])
    y = torch.tensor([1])
    temp, alpha = 2.0, 0.3
    ps, pt = torch.softmax(s / temp, -1), torch.softmax(t / temp, -1)
    kl = float((pt * (pt.log() - ps.log())).sum())
    ce = -math.log(float(torch.softmax(s, -1)[0, 1]))
    expected = alpha * temp**2 * kl + (1 - alpha) * ce
    assert float(kd_loss(s, t, y, alpha=alpha, temperature=temp)) == pytest.approx(expected, rel=1e-5)
    assert float(kd_loss(s, None, y, alpha=alpha, temperature=temp)) == pytest.approx(ce, rel=1e-5)


def test_retention_formula_on_known_numbers() -> None:
    assert retention(0.81, 0.9) == pytest.approx(0.9)  # accuracy: student / teacher
    assert retention(12.0, 10.0, higher_is_better=False) == pytest.approx(10 / 12)  # perplexity: teacher / student


def test_causal_student_is_smaller_and_its_loss_falls(tmp_path: Path) -> None:
    teacher = write_tiny_causal_lm(tmp_path / "teacher", layers=4)
    turns = tiny_turns(24)
    out = distill(teacher, turns, turns, params=DistillParams(steps=40, lr=3e-3, retention_metric="perplexity", **FAST))
    m = out.metrics
    assert m["student_params"] < m["teacher_params"] and m["student_layers"] == 2
    assert m["loss_last_10_mean"] < m["loss_first_10_mean"]
    # answers are scored by the one quality path for both models, whatever metric gates
    assert {"teacher_bleu_zh", "student_bleu_en", "teacher_slot_carry", "student_degenerate_rate", "retention_answers"} <= m.keys()
    assert m["retention_metric"] == "perplexity"
    assert m["retention"] == pytest.approx(m["teacher_perplexity"] / m["student_perplexity"])
    assert m["retention_ok"] == (m["retention"] >= 0.9)
    assert out.model.config.num_hidden_layers == 2


def test_classifier_student(tmp_path: Path) -> None:
    teacher = write_tiny_classifier(tmp_path / "teacher", layers=4)
    turns = tiny_turns(24)
    out = distill(teacher, turns, turns, params=DistillParams(steps=30, lr=3e-3, **FAST))
    m = out.metrics
    assert m["student_params"] < m["teacher_params"]
    assert m["retention_metric"] == "accuracy"
    assert m["retention"] == pytest.approx(m["student_accuracy"] / m["teacher_accuracy"])
    assert m["loss_last_10_mean"] < m["loss_first_10_mean"]


def test_bad_teacher_folder_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist"):
        open_folder(tmp_path / "nope", key="distill (teacher folder)")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(ModelFolderError, match="not a model folder"):
        open_folder(tmp_path / "junk", key="prune.source")

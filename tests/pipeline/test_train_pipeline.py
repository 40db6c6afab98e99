"""base + train under the real `dvc repro` with the tiny scratch profile: both families end to end,
and resume after the train stage is killed with SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.pipeline.conftest import Project

pytestmark = pytest.mark.pipeline


def _metrics(project: Project) -> dict:
    return json.loads((project.root / "reports" / "train.json").read_text(encoding="utf-8"))


def test_both_families_end_to_end(project: Project):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    first = project.repro("train")
    assert {"base", "train"} <= set(first.ran)
    m = _metrics(project)
    assert m["steps"] == project.param("train.max_steps") and m["resumed_from_step"] == 0
    assert m["val_perplexity"] > 1 and "val_bleu" in m
    teacher = project.root / "models" / "teacher"
    model = AutoModelForCausalLM.from_pretrained(teacher)
    manifest = json.loads((teacher / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["family"] == "causal_lm" and manifest["variant"] == "teacher"
    assert len(manifest["data_sha256"]) == 64 and len(manifest["params_sha256"]) == 64
    assert model.config.num_hidden_layers == 2
    curves = project.root / "reports" / "train" / "plots" / "metrics"
    loss_rows = (curves / "train" / "loss.tsv").read_text(encoding="utf-8").splitlines()
    assert loss_rows[0].split("\t") == ["step", "loss"] and len(loss_rows) == m["steps"] + 1
    assert (curves / "val" / "perplexity.tsv").exists() and (curves / "val" / "bleu.tsv").exists()
    assert not list((project.root / "checkpoints" / "train").glob("*/step-*"))  # cleared once published

    # nothing changed: nothing reruns; a train knob reruns train only
    assert "train" not in project.repro("train").ran
    project.set_param("train.label_smoothing", 0.1)
    again = project.repro("train")
    assert again.ran == ["train"]

    project.set_param("model.family", "classifier")
    clf = project.repro("train")
    assert clf.ran == ["base", "train"]
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    manifest = json.loads((teacher / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["family"] == "classifier" and manifest["details"]["calibration_temperature"] > 0
    responses = json.loads((teacher / "responses.json").read_text(encoding="utf-8"))
    assert set(responses) == set(model.config.id2label.values())
    m = _metrics(project)
    assert 0 <= m["ece_after"] <= 1 and 0 <= m["val_accuracy"] <= 1


def test_bad_params_fail_before_heavy_work(project: Project):
    project.set_param("train.max_seq_len", 4096)
    done = project.run("repro", "train", check=False)
    assert done.returncode != 0
    assert "train.max_seq_len = 4096 exceeds the model's context" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_resume_after_sigkill_matches_an_uninterrupted_run(make_project: Callable[[], Project]):
    opts = {"train.max_steps": 60, "train.checkpoint_every_steps": 10, "train.eval_every_steps": 20}
    killed, clean = make_project(), make_project()
    for p in (killed, clean):
        for k, v in opts.items():
            p.set_param(k, v)
        p.repro("base")

    # start the train stage, wait for its first complete checkpoint, then SIGKILL the whole group
    proc = subprocess.Popen(
        [str(killed.env["PATH"].split(os.pathsep)[0] + "/dvc"), "repro", "train"], cwd=killed.root, env=killed.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    ckpt_root = killed.root / "checkpoints" / "train"
    deadline = time.monotonic() + 600
    while not list(ckpt_root.glob("*/step-*")):
        assert proc.poll() is None, f"train finished before a checkpoint appeared:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed.root / "models" / "teacher").exists()  # nothing half-published
    saved = sorted(int(p.name.split("-")[1]) for p in ckpt_root.glob("*/step-*"))
    assert saved and saved[-1] < 60

    resumed = killed.repro("train")
    assert resumed.ran == ["train"]
    match = re.search(r"resuming from step (\d+)", resumed.output)
    assert match, resumed.output[-3000:]
    step = int(match.group(1))
    assert step >= saved[-1] and step % 10 == 0
    assert _metrics(killed)["resumed_from_step"] == step

    clean.repro("train")
    assert _metrics(clean)["resumed_from_step"] == 0
    # bitwise: same data order, RNG streams, optimizer and scheduler state after the resume
    assert killed.digest("models/teacher/model.safetensors") == clean.digest("models/teacher/model.safetensors")
    drop = {"resumed_from_step"}
    assert {k: v for k, v in _metrics(killed).items() if k not in drop} == {
        k: v for k, v in _metrics(clean).items() if k not in drop
    }

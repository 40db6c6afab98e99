"""chatforge.modeling.preference and stages/kto.py: KTO rows read with exact rejects, completions scored
as training scores assistant tokens, a trainer that moves the policy the way the labels say, and the
stage's off switch (no feedback: the input published unchanged) and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinymodels import build_tiny_tokenizer, write_tiny_causal_lm, write_tiny_classifier

from chatforge.modeling import preference as pref
from chatforge.params import KTOParams
from chatforge.runtime.conversation import IGNORE, Conversation, tokenize_chat

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[3]
Q = [{"role": "user", "content": "what is the weather in Beijing"}]
GOOD, BAD = "It is sunny today, 15 to 25 degrees.", "Your order has shipped and arrives tomorrow."


def row(label: object = True, **over: object) -> str:
    r = {"prompt": Q, "completion": [{"role": "assistant", "content": GOOD}], "label": label, "source": "thumbs_up"}
    r.update(over)
    return json.dumps(r, ensure_ascii=False)


def toy_rows(n: int = 6) -> str:
    """n desirable (the weather answer) and n undesirable (an off-topic answer) rows for one prompt."""
    lines = []
    for _ in range(n):
        lines += [row(True), row(False, completion=[{"role": "assistant", "content": BAD}], source="thumbs_down")]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- reading
def test_rows_are_read_and_bad_rows_are_exact_rejects(tmp_path: Path) -> None:
    folder = tmp_path / "preferences"
    folder.mkdir()
    lines = [
        row(True),                                                  # 1 ok (conversational)
        "",                                                         # 2 blank: skipped, not a row
        '{"prompt": "hi", "completion": "hello", "label": false}',  # 3 ok (standard format: strings)
        "{not json",                                                # 4
        "[1, 2]",                                                   # 5
        json.dumps({"prompt": "hi", "label": True}),                # 6
        row("yes"),                                                 # 7
        row(True, prompt=[{"role": "assistant", "content": "hi"}]),  # 8 ends with the assistant
        row(True, prompt=[{"role": "user", "content": ["a", "b"]}]),  # 9 content parts, not text
        row(True, completion=[{"role": "user", "content": "x"}]),   # 10
        row(True, completion="   "),                                # 11
        row(False, prompt=[]),                                      # 12
    ]
    (folder / "kto.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "kto.rejects.jsonl").write_text('{"conversation_id": "c5", "reason": "x"}\n', encoding="utf-8")  # not rows
    (folder / "notes.txt").write_text("not jsonl\n", encoding="utf-8")
    (folder / "more.jsonl").write_bytes(row(False).encode() + b"\n\xff\xfe\n")  # files are read in sorted order
    got = pref.read_preferences(folder)
    kto, more = folder / "kto.jsonl", folder / "more.jsonl"
    assert got.files == [str(kto), str(more)]
    assert [(e.location, e.desirable, e.completion) for e in got.examples] == [
        (f"{kto}:1", True, GOOD), (f"{kto}:3", False, "hello"), (f"{more}:1", False, GOOD)]
    assert got.examples[1].prompt == [{"role": "user", "content": "hi"}] and got.examples[0].source == "thumbs_up"
    assert [(r["location"], r["reason"]) for r in got.rejects] == [
        (f"{kto}:4", "malformed_json"), (f"{kto}:5", "not_an_object"), (f"{kto}:6", "missing_field"),
        (f"{kto}:7", "bad_label"), (f"{kto}:8", "bad_prompt"), (f"{kto}:9", "bad_prompt"), (f"{kto}:10", "bad_completion"),
        (f"{kto}:11", "empty_completion"), (f"{kto}:12", "bad_prompt"), (f"{more}:2", "not_utf8")]
    details = {r["location"].rsplit(":", 1)[1]: r["detail"] for r in got.rejects if r["location"].startswith(str(kto))}
    assert details["6"] == "no completion (has ['label', 'prompt']): each row needs prompt, completion and label"
    assert details["7"] == "label is 'yes': write true (desirable) or false (undesirable)"
    assert details["12"] == "prompt is an empty list: write a list of {\"role\", \"content\"} messages or a string"
    m = got.metrics()
    assert (m["files"], m["rows_read"], m["rows"], m["rejected"], m["desirable"], m["undesirable"]) == (2, 13, 3, 10, 1, 2)
    assert (m["rejected_bad_prompt"], m["rejected_malformed_json"], m["rejected_not_utf8"]) == (3, 1, 1)
    assert set(pref.REJECT_REASONS) == {k.removeprefix("rejected_") for k in m if k.startswith("rejected_")}
    assert len(m["rejects"]) == 10


def test_a_file_of_only_bad_rows_is_an_error_and_no_folder_is_one_too(tmp_path: Path) -> None:
    bad = tmp_path / "kto.jsonl"
    bad.write_text('{"prompt": "hi"}\nnot json at all ' + "x" * 500 + "\n", encoding="utf-8")
    with pytest.raises(pref.PreferenceError) as err:
        pref.read_preferences(tmp_path)
    message = str(err.value)
    assert "none of its 2 rows is a usable KTO example (malformed_json 1, missing_field 1; first at 1: no completion, label" in message
    assert "Fix or remove the file" in message and "x" * 100 not in message  # never echoes the line
    with pytest.raises(pref.PreferenceError, match="does not exist: create the folder"):
        pref.read_preferences(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pref.read_preferences(empty).examples == []


def test_skip_reasons_and_weights() -> None:
    rows = pref.Preferences(examples=[pref.PreferenceExample(Q, GOOD, True, "f:1")] * 3)
    params = KTOParams(min_rows=4)
    assert pref.skip_reason(pref.Preferences(), params, family="causal_lm").startswith("no feedback")
    assert pref.skip_reason(rows, params, family="causal_lm") == "3 usable rows, fewer than kto.min_rows = 4"
    assert pref.skip_reason(rows, KTOParams(min_rows=2, steps=0), family="causal_lm") == "kto.steps is 0"
    assert "classifier" in pref.skip_reason(rows, KTOParams(min_rows=2), family="classifier")
    assert pref.skip_reason(rows, KTOParams(min_rows=2), family="causal_lm") is None

    rule = pref.choose_weights(10, 30, KTOParams(desirable_weight=None, undesirable_weight=None))
    assert (rule["desirable_weight"], rule["undesirable_weight"], rule["weights_from"], rule["weights_in_band"]) == (
        3.0, 1.0, "imbalance_rule", True)
    given = pref.choose_weights(10, 30, KTOParams())  # TRL's 1.0 / 1.0 on 1:3 data: used, warned, recorded
    assert (given["desirable_weight"], given["weight_ratio"], given["weights_in_band"]) == (1.0, pytest.approx(1 / 3), False)
    assert "outside [1, 4/3]" in given["weights_note"] and "desirable_weight=3.0" in given["weights_note"]
    assert pref.choose_weights(5, 0, KTOParams())["weight_ratio"] is None
    with pytest.raises(ValueError, match="both to numbers, or both to null"):
        KTOParams(desirable_weight=None)


# ------------------------------------------------------------------------------------- scoring
def test_the_completion_is_scored_exactly_as_training_labels_an_answer() -> None:
    tok = build_tiny_tokenizer()
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "查询北京天气"},
              {"role": "assistant", "content": "好的"}, {"role": "user", "content": "hello"}]
    ex, cut = pref.tokenize_pair(tok, prompt, GOOD, max_seq_len=512)
    full = tokenize_chat(tok, Conversation("c", "en", None, [*prompt, {"role": "assistant", "content": GOOD}]))
    scored = [i for i, label in enumerate(ex.labels) if label != IGNORE]
    assert not cut and ex.input_ids == full.input_ids[: scored[-1] + 1]
    assert [ex.labels[i] for i in scored] == [full.labels[i] for i in scored]  # the train stage's labels, same positions
    assert tok.decode([ex.input_ids[i] for i in scored]) == GOOD + "<|im_end|>"  # content + end-of-turn only
    assert sum(label != IGNORE for label in full.labels) > len(scored)  # the prompt's answer "好的" is not scored

    long_prompt = [{"role": "user", "content": "查询北京天气 " * 40}]
    short, cut = pref.tokenize_pair(tok, long_prompt, GOOD, max_seq_len=32)
    kept = [t for t, label in zip(short.input_ids, short.labels, strict=True) if label != IGNORE]
    assert cut and len(short.input_ids) == 32 and tok.decode(kept) == GOOD + "<|im_end|>"  # the prompt's start is cut


def test_batches_pair_each_prompt_with_the_previous_completion() -> None:
    tok = build_tiny_tokenizer()
    examples = [pref.PreferenceExample([{"role": "user", "content": f"q{i}"}], f"answer {i}", i % 2 == 0, f"f:{i}")
                for i in range(5)]
    batches, truncated = pref.make_batches(examples, tok, batch_size=2, max_seq_len=128, seed=0)
    assert truncated == 0 and [len(b.desirable) for b in batches] == [2, 3]  # a last batch of one joins the previous
    for b in batches:
        ids = [tok.decode([t for t in row if t != tok.pad_token_id]) for row in b.target["input_ids"].tolist()]
        kl = [tok.decode([t for t in row if t != tok.pad_token_id]) for row in b.kl["input_ids"].tolist()]
        answers = [text.rsplit("assistant\n", 1)[1] for text in ids]
        assert [text.rsplit("assistant\n", 1)[1] for text in kl] == answers[-1:] + answers[:-1]
        assert [text.split("user\n")[1][:2] for text in kl] == [text.split("user\n")[1][:2] for text in ids]


# ------------------------------------------------------------------------------------- training
def test_kto_on_a_toy_set_lowers_the_loss_and_prefers_the_desirable_answer(tmp_path: Path) -> None:
    folder = write_tiny_causal_lm(tmp_path / "m")
    (tmp_path / "p.jsonl").write_text(toy_rows(4), encoding="utf-8")
    examples = pref.read_preferences(tmp_path / "p.jsonl").examples
    params = KTOParams(steps=12, lr=1e-3, batch_size=4, min_rows=2)
    out = pref.train_kto(folder, examples, params=params)
    m = out.metrics
    assert len(out.losses) == m["steps"] == 12 and m["batches"] == 2
    assert m["loss_first"] == pytest.approx(0.5)  # policy == reference, z0 = 0: 1 - sigmoid(0) for every example
    assert m["loss_last_10_mean"] < m["loss_first_10_mean"] and m["loss_last"] < 0.45
    assert m["reward_margin_before"] == 0.0 and m["reward_margin_after"] > 0.5
    assert m["desirable_logp_change"] > 0 > m["undesirable_logp_change"]
    assert m["logp_margin_after"] > m["logp_margin_before"] + 5
    assert (m["desirable_weight"], m["undesirable_weight"], m["weights_in_band"]) == (1.0, 1.0, True)
    assert m["kl_after"] >= 0 and out.model.training is False
    again = pref.train_kto(folder, examples, params=params)  # seeded: the same numbers on CPU
    assert again.losses == out.losses


def test_publish_unchanged_copies_the_weights_byte_for_byte(tmp_path: Path) -> None:
    src = write_tiny_causal_lm(tmp_path / "teacher")
    (src / "retrieval.jsonl").write_text("{}\n", encoding="utf-8")
    pref.publish_unchanged(src, tmp_path / "aligned", variant="aligned", details={"kto": {"skipped": True, "reason": "r"}})
    out = tmp_path / "aligned"
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (out / "retrieval.jsonl").exists() and (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    manifest = json.loads((out / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["variant"] == "aligned" and manifest["parent"] == str(src)
    assert manifest["details"]["kto"] == {"skipped": True, "reason": "r"}


# ------------------------------------------------------------------------------------- the stage
def run_stage(cwd: Path, model: Path, preferences: Path) -> subprocess.CompletedProcess[str]:
    args = [str(model), str(preferences), "models/aligned", "reports/kto.json", "--timings", "reports/timings/kto.json"]
    return subprocess.run([sys.executable, str(ROOT / "stages" / "kto.py"), *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=300)


def test_stage_without_feedback_publishes_the_teacher_unchanged_and_bad_input_exits_2(tmp_path: Path) -> None:
    teacher = write_tiny_causal_lm(tmp_path / "teacher")
    prefs = tmp_path / "preferences"
    prefs.mkdir()
    (tmp_path / "params.yaml").write_text("kto:\n  steps: 3\n  batch_size: 2\n  min_rows: 4\n", encoding="utf-8")
    (prefs / "kto.jsonl").write_text(toy_rows(1) + "{bad\n", encoding="utf-8")  # 2 usable rows < min_rows, 1 reject
    done = run_stage(tmp_path, teacher, prefs)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "reports/kto.json").read_text(encoding="utf-8"))
    assert metrics["skipped"] is True and metrics["skip_reason"] == "2 usable rows, fewer than kto.min_rows = 4"
    assert (metrics["rows"], metrics["rejected"], metrics["rejected_malformed_json"]) == (2, 1, 1)
    aligned = tmp_path / "models/aligned"
    assert (aligned / "model.safetensors").read_bytes() == (teacher / "model.safetensors").read_bytes()
    manifest = json.loads((aligned / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["variant"] == "aligned" and manifest["details"]["kto"]["skipped"] is True
    assert json.loads((tmp_path / "reports/timings/kto.json").read_text())["stage"] == "kto"

    # a file of only bad rows: exit 2, the reason, no traceback, nothing published
    (prefs / "kto.jsonl").write_text("[1]\n{}\n", encoding="utf-8")
    (tmp_path / "models/aligned").rename(tmp_path / "old")
    done = run_stage(tmp_path, teacher, prefs)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "none of its 2 rows is a usable KTO example (missing_field 1, not_an_object 1" in done.stderr
    assert not aligned.exists()
    # a bad param and a model folder that is not one: exit 2 before any work
    (tmp_path / "params.yaml").write_text("kto:\n  batch_size: 1\n", encoding="utf-8")
    done = run_stage(tmp_path, teacher, prefs)
    assert done.returncode == 2 and "kto.batch_size = 1" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "params.yaml").write_text("kto:\n  steps: 3\n", encoding="utf-8")
    done = run_stage(tmp_path, tmp_path / "nowhere", prefs)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_stage_trains_on_feedback_and_skips_a_classifier(tmp_path: Path) -> None:
    teacher = write_tiny_causal_lm(tmp_path / "teacher")
    prefs = tmp_path / "preferences"
    prefs.mkdir()
    (prefs / "kto.jsonl").write_text(toy_rows(2), encoding="utf-8")
    (tmp_path / "params.yaml").write_text("kto:\n  steps: 3\n  batch_size: 2\n  min_rows: 4\n  lr: 1.0e-3\n", encoding="utf-8")
    done = run_stage(tmp_path, teacher, prefs)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "reports/kto.json").read_text(encoding="utf-8"))
    assert metrics["skipped"] is False and metrics["skip_reason"] == "" and metrics["steps"] == 3
    assert (metrics["desirable"], metrics["undesirable"], metrics["rejected"]) == (2, 2, 0)
    aligned = tmp_path / "models/aligned"
    assert (aligned / "model.safetensors").read_bytes() != (teacher / "model.safetensors").read_bytes()
    manifest = json.loads((aligned / "chatforge.json").read_text(encoding="utf-8"))
    assert manifest["variant"] == "aligned" and manifest["details"]["kto"]["rows"] == 4

    clf = write_tiny_classifier(tmp_path / "clf")
    done = run_stage(tmp_path, clf, prefs)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "reports/kto.json").read_text(encoding="utf-8"))
    assert metrics["skipped"] is True and "classifier" in metrics["skip_reason"]
    assert (aligned / "responses.json").read_bytes() == (clf / "responses.json").read_bytes()

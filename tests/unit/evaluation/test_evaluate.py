import json
import math
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from chatforge.data.schema import conform
from chatforge.evaluation import evaluate as ev
from chatforge.io import sha256_tree
from chatforge.params import EvaluateParams, ServeHybrid
from chatforge.runtime import quality
from chatforge.runtime.decode import load_generator
from chatforge.runtime.quality import answer_samples
from tinymodels import build_tiny_causal_lm, build_tiny_classifier

torch.set_num_threads(1)


def serving(threshold: float) -> ev.Serving:
    """serve's defaults with this confidence threshold (first 4 tokens, retrieval in the loop on)."""
    return ev.Serving(threshold, 4, ServeHybrid(), {"zh": "抱歉，我不确定。", "en": "Sorry, not sure."})


def turns(rows):
    return conform(pl.DataFrame(rows, schema=["conversation_id", "turn", "role", "content", "lang", "intent", "method"], orient="row"))


TEST = turns([
    ("a", 0, "user", "查询北京天气", "zh", "weather", "original"),
    ("a", 1, "assistant", "今日北京晴，15-25℃", "zh", "weather", "original"),
    ("b", 0, "user", "where is my order?", "en", "order_status", "original"),
    ("b", 1, "assistant", "", "en", "order_status", "original"),
    ("b", 2, "user", "order 12345", "en", "order_status", "original"),
    ("b", 3, "assistant", "It ships tomorrow.", "en", "order_status", "original"),
    ("c", 0, "user", "hi", "en", "greeting", "back_translation"),
    ("c", 1, "assistant", "hello", "en", "greeting", "back_translation"),
])


def test_samples_take_original_rows_and_skip_empty_references():
    convs, counts = ev.test_conversations(TEST)
    assert [c.conversation_id for c in convs] == ["a", "b"]
    assert counts == {"test_rows_not_original": 2}
    samples, sc = answer_samples(convs, max_per_lang=5, seed=0)
    assert sorted((s.conversation_id, s.reference) for s in samples) == [("a", "今日北京晴，15-25℃"), ("b", "It ships tomorrow.")]
    b = next(s for s in samples if s.conversation_id == "b")
    assert [m["content"] for m in b.prompt] == ["where is my order?", "", "order 12345"]
    assert sc == {"references_empty_skipped": 1, "references_pii_skipped": 0, "samples_zh": 1, "samples_en": 1}


def test_samples_skip_references_showing_a_mask_tag_the_dialogue_never_held():
    from chatforge.runtime.conversation import Conversation

    def conv(cid, *turns):
        return Conversation(cid, "zh", None, [{"role": r, "content": t} for r, t in turns])

    convs = [
        conv("p1", ("user", "这家餐馆的电话是多少？"), ("assistant", "电话是<PHONE>。"), ("user", "地址呢？"), ("assistant", "地址是西城区2号。")),
        conv("p2", ("user", "我的电话是<PHONE>，请回电"), ("assistant", "已记录<PHONE>，稍后回电。")),
    ]
    samples, sc = answer_samples(convs, max_per_lang=None, seed=0)
    # p1's first answer needs a number the dialogue never gave: skipped; p2's repeats the user's own (masked) number
    assert sorted((s.conversation_id, s.reference) for s in samples) == [
        ("p1", "地址是西城区2号。"), ("p2", "已记录<PHONE>，稍后回电。")]
    assert sc == {"references_empty_skipped": 0, "references_pii_skipped": 1, "samples_zh": 2, "samples_en": 0}


def test_empty_test_split_is_a_clear_error():
    with pytest.raises(ev.EvaluationError, match="test split is empty.*test_fraction"):
        ev.test_conversations(TEST.head(0))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "teacher")


def test_perplexity_of_uniform_model_equals_vocab_size(tiny_lm):
    gen = load_generator(tiny_lm, backend="torch")
    with torch.no_grad():
        gen.model.get_output_embeddings().weight.zero_()  # logits all 0 -> uniform distribution
    convs, _ = ev.test_conversations(TEST)
    out = quality.assistant_perplexity(gen, convs, max_seq_len=512)
    v = gen.model.config.vocab_size
    assert out["perplexity"] == pytest.approx(v, rel=1e-5)
    assert out["perplexity_zh"] == pytest.approx(v, rel=1e-5)
    assert out["perplexity_en"] == pytest.approx(v, rel=1e-5)


def test_generator_logprobs_match_full_forward(tiny_lm):
    gen = load_generator(tiny_lm, backend="torch")
    ids = gen.prompt_ids([{"role": "user", "content": "hello"}])
    lp = gen.logprobs(ids)
    assert lp.shape == (len(ids) - 1,)
    assert (lp <= 0).all() and math.isfinite(float(lp.sum()))


def test_evaluate_variant_causal_lm_reports_quality_size_speed(tiny_lm):
    convs, _ = ev.test_conversations(TEST)
    samples, _ = answer_samples(convs, max_per_lang=5, seed=0)
    params = EvaluateParams(max_new_tokens=4, latency_runs=2, latency_new_tokens=4)
    out, extra = ev.evaluate_variant("teacher", tiny_lm, convs, samples, params, serving=serving(0.7))
    for key in ("bleu_zh", "bleu_en", "chrf", "exact_match", "slot_carry", "degenerate_rate", "perplexity_zh",
                "perplexity_en", "wrong_lang_zh", "answer_chars", "params", "size_mb", "latency_p50_ms",
                "latency_p95_ms", "tokens_per_s"):
        assert key in out, key
    # the cap of 4 new tokens is below 2 x the longest reference + 16: every answer the model writes is
    # cut, so degenerate; none is confident and the folder carries no exchanges, so users read the fallback
    assert out["max_new_tokens"] == 4.0 and out["model_degenerate_rate"] == 1.0
    assert out["fallback_rate"] == 1.0 and out["answered_by_model"] == 0.0 and out["degenerate_rate"] == 0.0
    assert out["top_answer_share_en"] == 1.0  # the same fallback sentence for every question
    model_params = sum(p.numel() for p in load_generator(tiny_lm, backend="torch").model.parameters())
    assert out["params"] == model_params
    assert out["latency_p95_ms"] >= out["latency_p50_ms"] > 0
    assert len(extra["answers"]) == len(samples)


def test_a_model_with_slot_placeholders_is_also_scored_on_raw_prompts(tiny_lm, tmp_path):
    """raw_* (the prompts as llama.cpp/Ollama pass them) exist only for a model whose tokenizer
    holds a slot configuration; scoring them leaves the folder's tokenizer as it was."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.runtime import slots

    convs, _ = ev.test_conversations(TEST)
    samples, _ = answer_samples(convs, max_per_lang=5, seed=0)
    params = EvaluateParams(max_new_tokens=4, latency_runs=1, latency_new_tokens=2)
    plain, _ = ev.evaluate_variant("teacher", tiny_lm, convs, samples, params, serving=serving(0.7))
    assert not any(k.startswith("raw_") for k in plain)

    folder = tmp_path / "slotted"
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_lm), AutoModelForCausalLM.from_pretrained(tiny_lm)
    slots.enable(tokenizer, slots.slot_config(["number"], max_per_kind=2, gazetteer={}))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chatforge.json").write_text((tiny_lm / "chatforge.json").read_text(encoding="utf-8"), encoding="utf-8")
    out, _ = ev.evaluate_variant("teacher", folder, convs, samples, params, serving=serving(0.7))
    assert {k for k in out if k.startswith("raw_")} == {f"raw_{k}" for k in ev.RAW_PROMPT_KEYS}
    assert 0.0 <= out["raw_bleu_en"] <= 100.0 and out["raw_degenerate_rate"] == 1.0  # 4 tokens cut every answer
    assert slots.CONFIG_KEY in AutoTokenizer.from_pretrained(folder).init_kwargs


def test_evaluate_classifier_scores_intents(tmp_path):
    responses = {k: {"zh": f"{k}-zh", "en": f"{k}-en"} for k in ("greeting", "order_status", "weather")}
    folder = build_tiny_classifier(tmp_path / "clf", responses=responses)
    convs, _ = ev.test_conversations(TEST)
    params = EvaluateParams(latency_runs=2)
    out, extra = ev.evaluate_variant("teacher", folder, convs, [], params, serving=serving(0.0))
    assert 0.0 <= out["accuracy"] <= 1.0 and out["fallback_rate"] == 0.0  # threshold 0 answers everything
    assert sum(map(sum, extra["confusion"]["matrix"])) == 2
    out_hi, _ = ev.evaluate_variant("teacher", folder, convs, [], params, serving=serving(0.999))
    assert out_hi["fallback_rate"] == 1.0  # an untrained 3-way classifier is never 99.9% sure


def test_missing_variants_are_reported_not_fatal(tiny_lm, tmp_path):
    present, missing = ev.check_variants({"teacher": tiny_lm, "student": tmp_path / "nope"}, ["teacher", "student", "int8"])
    assert list(present) == ["teacher"] and missing == ["student", "int8"]


def test_gates_on_known_numbers():
    variants = {
        "retrieval": {"bleu_zh": 60.0, "bleu_en": 50.0, "slot_carry": 0.3},
        "teacher": {"bleu_zh": 70.0, "bleu_en": 60.0, "slot_carry": 1.0, "perplexity": 9.0},
        "student": {"bleu_zh": 59.5, "bleu_en": 60.0, "slot_carry": 1.0},  # keeps 0.85 of the teacher's zh BLEU
        "pruned": {"bleu_zh": 59.5, "bleu_en": 57.0, "slot_carry": 0.99},
        "int8": {"bleu_zh": 61.0, "bleu_en": 49.0, "slot_carry": 0.96, "degenerate_rate": 0.03,
                 "wrong_lang_zh": 0.0, "wrong_lang_en": 0.02},
    }
    reports = {"train": {"val_gap": 0.15}, "quantize": {"size_ratio": 0.26, "source": "pruned"}}
    gates = ev.compute_gates(variants, reports, EvaluateParams(), served="int8")
    assert gates["train_val_gap"]["status"] == "warn"  # a proxy: warns, never fails the build
    assert gates["teacher_perplexity_band"]["status"] == "pass"
    assert gates["served_bleu_zh"] == {"value": 61.0, "limit": ">= 1.0 x retrieval (60.00)", "status": "pass"}
    assert gates["served_bleu_en"]["status"] == "fail"  # 49 < 50
    assert gates["served_slot_carry"]["status"] == "pass"  # 0.96 >= 0.95
    assert gates["served_degenerate_rate"]["status"] == "fail"  # 0.03 > 0.02
    assert gates["served_wrong_lang_zh"]["status"] == "pass" and gates["served_wrong_lang_en"]["status"] == "fail"
    assert gates["distill_retention"]["value"] == pytest.approx(0.85) and gates["distill_retention"]["status"] == "fail"
    assert gates["prune_retention"]["value"] == pytest.approx(0.95) and gates["prune_retention"]["status"] == "pass"
    assert gates["int8_retention"]["value"] == pytest.approx(49 / 57) and gates["int8_retention"]["status"] == "fail"
    assert gates["int8_size_reduction"]["value"] == pytest.approx(0.74) and gates["int8_size_reduction"]["status"] == "pass"
    failures = ev.gate_failures(gates)
    assert [f.split(" failed")[0] for f in failures] == [
        "gate served_bleu_en", "gate served_degenerate_rate", "gate served_wrong_lang_en", "gate distill_retention",
        "gate int8_retention"]
    assert failures[0] == ("gate served_bleu_en failed: 49, needs >= 1.0 x retrieval (50.00). Look at: "
                           + ev.GATE_HINTS["served_bleu"])
    # the user lowers the bar in params.yaml: the same numbers pass
    lowered = EvaluateParams(gates={"min_bleu_vs_retrieval": 0.9, "max_degenerate_rate": 0.05, "max_wrong_lang": 0.05,
                                    "min_retention": 0.8})
    assert ev.gate_failures(ev.compute_gates(variants, reports, lowered, served="int8")) == []
    assert ev.compute_gates({}, {"train": {"val_gap": -0.4}}, EvaluateParams())["train_val_gap"]["status"] == "pass"
    gates = ev.compute_gates({"teacher": {"perplexity": 30.0}}, {}, EvaluateParams())
    assert gates["teacher_perplexity_band"]["status"] == "warn"
    assert gates["distill_retention"]["status"] == "missing"
    assert gates["served_bleu_zh"]["status"] == "missing"  # no served variant: missing, which never fails


def test_the_student_is_compared_with_aligned_when_it_is_evaluated():
    # distill reads models/aligned (the teacher after kto): with that variant evaluated it is the parent
    variants = {"teacher": {"bleu_zh": 70.0, "bleu_en": 60.0, "slot_carry": 1.0},
                "aligned": {"bleu_zh": 50.0, "bleu_en": 60.0, "slot_carry": 1.0},
                "student": {"bleu_zh": 47.5, "bleu_en": 60.0, "slot_carry": 1.0}}
    gates = ev.compute_gates(variants, {}, EvaluateParams())
    assert gates["distill_retention"]["value"] == pytest.approx(0.95) and "of aligned" in gates["distill_retention"]["limit"]
    del variants["aligned"]
    gates = ev.compute_gates(variants, {}, EvaluateParams())
    assert gates["distill_retention"]["value"] == pytest.approx(47.5 / 70) and "of teacher" in gates["distill_retention"]["limit"]


def test_served_variant_follows_serve_config(tmp_path):
    folders = {"teacher": tmp_path / "teacher", "pruned": tmp_path / "pruned", "int8": tmp_path / "onnx"}
    assert ev.served_variant(str(tmp_path / "onnx"), folders) == "int8"
    assert ev.served_variant(str(tmp_path / "teacher"), folders) == "teacher"
    assert ev.served_variant(str(tmp_path / "elsewhere"), folders) is None


def _run_stage(tmp_path: Path, repo_root: Path, args: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text((repo_root / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    TEST.write_parquet(tmp_path / "train.parquet")  # what the retrieval baseline looks up
    args = [args[0], "train.parquet", str(repo_root / "lexicons" / "gazetteers"), *args[1:]]
    return subprocess.run(
        [sys.executable, str(repo_root / "stages" / "evaluate.py"), *args],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )


def test_stage_evaluates_present_variants_and_names_missing(tmp_path, repo_root, tiny_lm):
    TEST.write_parquet(tmp_path / "test.parquet")
    proc = _run_stage(tmp_path, repo_root, [
        "test.parquet", "metrics.json", "details.json", "variants.csv",
        "--variant", f"teacher={tiny_lm}", "--variant", "student=models/student",
    ])
    # the served variant (models/onnx) is missing: its gates are not measured, so nothing fails
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "teacher" in metrics and "retrieval" in metrics and "student" not in metrics
    assert metrics["summary"]["variants_missing"] == "base,student,pruned,int8"
    assert metrics["summary"]["served_variant"] == "none"
    # the retrieval baseline looks up the same conversations it is tested on here: exact answers
    assert metrics["retrieval"]["exact_match"] == 1.0
    assert "variant student" in proc.stderr and "missing" in proc.stderr
    lines = (tmp_path / "variants.csv").read_text().splitlines()
    assert lines[0] == "variant,quality,size_mb,latency_p50_ms" and lines[1].startswith("retrieval,")
    assert lines[2].startswith("teacher,") and len(lines) == 3


def test_stage_fails_on_answer_gates_naming_gate_and_params(tmp_path, repo_root, tiny_lm):
    """An untrained model is served: the stage fails with the gate's message; a lowered bar passes."""
    import yaml

    TEST.write_parquet(tmp_path / "test.parquet")
    args = ["test.parquet", "m.json", "d.json", "v.csv", "--variant", f"teacher={tiny_lm}"]
    _run_stage(tmp_path, repo_root, args)  # writes params.yaml and train.parquet
    params = yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))
    params["serve"]["variants"] = [{"name": "teacher", "model": str(tiny_lm)}]
    params["evaluate"].update(max_new_tokens=8, latency_runs=1)

    def run(gates: dict) -> subprocess.CompletedProcess:
        params["evaluate"]["gates"] = gates
        text = yaml.safe_dump(params, allow_unicode=True)
        (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
        return subprocess.run(
            [sys.executable, str(repo_root / "stages" / "evaluate.py"), "test.parquet", "train.parquet",
             str(repo_root / "lexicons" / "gazetteers"), *args[1:]],
            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )

    proc = run({})
    assert proc.returncode == 1, proc.stderr
    assert "gate served_bleu_zh failed" in proc.stderr and "needs >= 1.0 x retrieval" in proc.stderr
    assert "evaluate.fail_on_gate: false" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["summary"]["served_variant"] == "teacher"
    assert "gate served_fallback_rate failed" in proc.stderr  # an untrained model is never confident
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["teacher"]["fallback_rate"] == 1.0 and metrics["teacher"]["calibration_t030_fallback_rate"] == 1.0
    proc = run({"min_bleu_vs_retrieval": 0.0, "min_slot_carry": 0.0, "max_degenerate_rate": 1.0, "max_wrong_lang": 1.0,
                "max_fallback_rate": 1.0})
    assert proc.returncode == 0, proc.stderr


def test_stage_empty_test_split_fails_clearly(tmp_path, repo_root, tiny_lm):
    TEST.head(0).write_parquet(tmp_path / "test.parquet")
    proc = _run_stage(tmp_path, repo_root, ["test.parquet", "m.json", "d.json", "v.csv", "--variant", f"teacher={tiny_lm}"])
    assert proc.returncode == 2  # bad input (the exit-code rule, chatforge.io.EXIT_BAD_INPUT)
    assert "test split is empty" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------- issue 15: classifiers per language, unevaluable variants skipped
def test_classifier_accuracy_and_fallback_per_language():
    """A classifier that cannot read Chinese (every zh input gets a wrong, unsure answer) shows it in
    accuracy_zh / fallback_rate_zh, while en stays right."""
    from types import SimpleNamespace

    class HalfBlind:
        labels = ("greeting", "order_status", "weather")

        def answer(self, messages, config, *, lang):
            text = messages[-1]["content"]
            if any("\u4e00" <= c <= "\u9fff" for c in text):
                return SimpleNamespace(intent="greeting", confidence=0.3)
            return SimpleNamespace(intent="order_status" if "order" in text else "weather", confidence=0.9)

    rows = [(f"z{i}", 0, "user", "查询北京天气", "zh", "weather", "original") for i in range(3)]
    rows += [(f"e{i}", 0, "user", "where is my order?", "en", "order_status", "original") for i in range(2)]
    convs, _ = ev.test_conversations(turns(rows))
    out = ev.evaluate_classifier(HalfBlind(), convs, threshold=0.7)["metrics"]
    assert (out["accuracy"], out["accuracy_zh"], out["accuracy_en"]) == (0.4, 0.0, 1.0)
    assert (out["fallback_rate"], out["fallback_rate_zh"], out["fallback_rate_en"]) == (0.6, 1.0, 0.0)
    assert (out["conversations_zh"], out["conversations_en"]) == (3, 2)


def _untouched_encoder(folder: Path) -> Path:
    """What `dvc repro base` writes for model.family: classifier: an encoder, no head, no responses."""
    from transformers import BertConfig, BertModel

    from chatforge.runtime.folder import Manifest, write_manifest

    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    write_manifest(folder, Manifest(family="classifier", variant="base", base="scratch"))
    return folder


def test_unevaluable_classifier_base_is_named_with_its_reason(tmp_path):
    responses = {k: {"zh": f"{k}-zh", "en": f"{k}-en"} for k in ("greeting", "order_status", "weather")}
    teacher = build_tiny_classifier(tmp_path / "clf", responses=responses)
    base = _untouched_encoder(tmp_path / "base")
    assert ev.unevaluable({"base": base, "teacher": teacher}) == {"base": (
        f"{base} has no classification head and no responses.json: an untrained encoder cannot classify intents or "
        "answer; only trained classifier variants are evaluated. Remove 'base' from evaluate.variants to leave it out "
        "without this note.")}


def test_sample_knobs_say_how_many_test_turns_there_were():
    convs, _ = ev.test_conversations(TEST)
    _, counts = answer_samples(convs, max_per_lang=150, seed=0)
    knobs = {k.key: k for k in ev.sample_knobs(convs, EvaluateParams(max_samples_per_lang=150), counts)}
    zh = knobs["evaluate.max_samples_per_lang (zh)"]
    assert (zh.requested, zh.reached, zh.far) == (150, 1, True)
    assert zh.message() == ("evaluate.max_samples_per_lang (zh): requested 150, reached 1 (1%): the test split has 1 zh "
                            "assistant turns (original rows, non-empty)")
    assert "evaluate.other_samples_per_lang (en)" not in knobs  # null: the same sample


def test_stage_skips_the_untouched_classifier_base_and_reports_languages(tmp_path, repo_root):
    responses = {k: {"zh": f"{k}-zh", "en": f"{k}-en"} for k in ("greeting", "order_status", "weather")}
    teacher = build_tiny_classifier(tmp_path / "clf", responses=responses)
    base = _untouched_encoder(tmp_path / "base")
    TEST.write_parquet(tmp_path / "test.parquet")
    proc = _run_stage(tmp_path, repo_root, ["test.parquet", "metrics.json", "details.json", "variants.csv",
                                            "--variant", f"base={base}", "--variant", f"teacher={teacher}"])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "base" not in metrics and metrics["summary"]["variants_skipped"] == "base"
    assert metrics["skipped"]["base"].startswith(f"{base} has no classification head and no responses.json")
    assert {"accuracy_zh", "accuracy_en", "fallback_rate_zh", "fallback_rate_en"} <= set(metrics["teacher"])
    assert metrics["knobs"]["evaluate.max_samples_per_lang (en)"]["reached"] == 1
    # which folder the numbers are about (export trusts a row only for this hash); the skipped base has none
    assert metrics["models"] == {"teacher": {"folder": str(teacher), "sha256": sha256_tree(teacher)}}
    assert "variant base skipped" in proc.stderr

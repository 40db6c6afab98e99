"""A collapsed model (one confident answer for everything) fails the build at evaluate, with the
collapse gate's message, while the same numbers pass when the user raises the limit."""

import json
import subprocess
import sys

import polars as pl
import torch
import yaml

from chatforge.data.schema import conform
from chatforge.runtime.conversation import Conversation, tokenize_chat

N = 12  # test conversations per language, each answer different: the references' top share is 1/12


def turns():
    rows = []
    for i in range(N):
        for lang, q, a in (("en", f"question number {i} about my parcel", f"Answer {i}: the parcel moves on day {i}."),
                           ("zh", f"第{i}个问题，关于我的包裹", f"第{i}个回答：包裹第{i}天到。")):
            cid = f"{lang}{i:02d}"
            rows += [(cid, 0, "user", q, lang, "order_status", "original"),
                     (cid, 1, "assistant", a, lang, "order_status", "original")]
    return conform(pl.DataFrame(rows, schema=["conversation_id", "turn", "role", "content", "lang", "intent", "method"],
                                orient="row"))


def collapsed_lm(folder):
    """The tiny model fine-tuned until it answers "Please contact us." to anything, confidently."""
    from tinymodels import write_tiny_causal_lm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_tiny_causal_lm(folder)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    questions = ["where is my order 123", "查询北京天气", "hello", "book a flight", "明天上海会下雨吗", "refund please"]
    examples = [tokenize_chat(tok, Conversation(str(i), "en", None, [{"role": "user", "content": q},
                                                                     {"role": "assistant", "content": "Please contact us."}]))
                for i, q in enumerate(questions)]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        for ex in examples:
            model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss.backward()
            opt.step()
            opt.zero_grad()
    model.save_pretrained(folder)
    return folder


def test_a_collapsed_model_fails_the_build_with_the_collapse_gate(tmp_path, repo_root):
    model = collapsed_lm(tmp_path / "collapsed")
    turns().write_parquet(tmp_path / "test.parquet")
    turns().write_parquet(tmp_path / "train.parquet")
    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    params["serve"]["variants"] = [{"name": "teacher", "model": str(model)}]
    params["serve"]["temperature"] = 0.0  # greedy: the collapse is exact (one answer, share 1.0 in both languages)
    params["evaluate"].update(max_new_tokens=16, latency_runs=1, variants=["teacher"])

    def run(gates):
        params["evaluate"]["gates"] = gates
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
        return subprocess.run(
            [sys.executable, str(repo_root / "stages" / "evaluate.py"), "test.parquet", "train.parquet",
             str(repo_root / "lexicons" / "gazetteers"), "m.json", "d.json", "v.csv", "--variant", f"teacher={model}"],
            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    proc = run({})
    assert proc.returncode == 1, proc.stderr
    for lang in ("en", "zh"):
        assert (f"gate served_collapse_{lang} failed: 1, needs <= 0.1250 = max(0.05, 1.5 x references' 0.0833). "
                "Look at: the model says one sentence to many questions") in proc.stderr
    assert "Traceback" not in proc.stderr
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["teacher"]["answered_by_model"] == 1.0  # confident: no fallback hides the collapse
    # "please contact us ." x 12: 36 bigrams, 3 distinct
    assert metrics["teacher"]["top_answer_share_en"] == 1.0 and metrics["teacher"]["distinct_2_en"] == 3 / (3 * N)
    assert metrics["summary"]["reference_top_answer_share_zh"] == 1 / N
    # everything else about these answers is lowered away: only the collapse limit decides
    lenient = {"min_bleu_vs_retrieval": 0.0, "min_slot_carry": 0.0, "max_degenerate_rate": 1.0, "max_wrong_lang": 1.0,
               "max_fallback_rate": 1.0, "min_paraphrase_margin": -1.0}
    proc = run(lenient)
    assert proc.returncode == 1 and "gate served_collapse_en failed" in proc.stderr
    # a factor the user sets names its own limit
    proc = run({**lenient, "collapse_factor": 2.0})
    assert "gate served_collapse_en failed: 1, needs <= 0.1667 = max(0.05, 2.0 x references' 0.0833)" in proc.stderr
    proc = run({**lenient, "collapse_floor": 1.0})
    assert proc.returncode == 0, proc.stderr

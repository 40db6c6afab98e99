"""The committed demo corpus: reproducible from its generator, shaped as documented, messy on purpose."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "make_demo_corpus.py"
CONVERSATIONS = ROOT / "data/raw/demo/conversations.json"
PARALLEL = ROOT / "data/raw/demo/parallel.tsv"
LEXICONS = ROOT / "lexicons"

CJK = re.compile(r"[\u3400-\u9fff]")
HTML = re.compile(r"</?(p|br|b|div|span)\b[^>]*>|&nbsp;")
FULL_WIDTH_ALNUM = re.compile(r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")
EMOJI = re.compile(r"[\U0001F300-\U0001FAFF]")
ZERO_WIDTH = re.compile(r"[\u200b-\u200d\ufeff]")
PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
EMAIL = re.compile(r"[\w.]+@[\w.]+\.\w+")
ID_NUMBER = re.compile(r"(?<!\d)\d{17}[\dX](?!\d)")
ORDER_13 = re.compile(r"(?<![\d\uff10-\uff19])2024\d{9}(?![\d\uff10-\uff19])")


def load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return load_generator()


@pytest.fixture(scope="module")
def conversations() -> list[dict]:
    return json.loads(CONVERSATIONS.read_text(encoding="utf-8"))["conversations"]


@pytest.fixture(scope="module")
def parallel_rows() -> list[str]:
    return PARALLEL.read_text(encoding="utf-8").split("\n")


def lexicon_pairs() -> list[tuple[str, str]]:
    lines = (LEXICONS / "synonyms.tsv").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines if line and not line.startswith("#")]


def written_files(root: Path) -> dict[str, bytes]:
    paths = [root / "data/raw/demo/conversations.json", root / "data/raw/demo/parallel.tsv"]
    paths += [root / "lexicons/synonyms.tsv", *sorted((root / "lexicons/gazetteers").rglob("*.txt"))]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_committed_files_equal_a_fresh_generation(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    fresh, committed = written_files(tmp_path), written_files(ROOT)
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert not changed, f"rerun `python scripts/make_demo_corpus.py`: {changed} differ from the generator"


def test_generation_depends_on_seed_and_count(gen):
    a, b, c = gen.make_conversations(300, 1), gen.make_conversations(300, 1), gen.make_conversations(300, 2)
    assert a == b
    assert a != c
    assert len(a) == 300 and [x["id"] for x in a] == [f"conv_{k:05d}" for k in range(1, 301)]


def test_corpus_shape(conversations):
    assert len(conversations) >= 3000
    assert len({c["id"] for c in conversations}) == len(conversations)
    sizes = Counter(c["intent"] for c in conversations)
    assert len(sizes) >= 12
    assert max(sizes.values()) / min(sizes.values()) >= 5
    langs = Counter(c["lang"] for c in conversations)
    assert set(langs) == {"zh", "en"}
    assert 0.5 <= langs["zh"] / len(conversations) <= 0.65
    for c in conversations:
        roles = [m["role"] for m in c["messages"]]
        assert 2 <= len(roles) <= 8, c["id"]
        assert roles == ["user", "assistant"] * (len(roles) // 2), c["id"]
        assert all(isinstance(m["content"], str) for m in c["messages"])
    assert any(c["messages"][0]["content"] == "查询北京天气" for c in conversations)
    assert any(len(c["messages"]) >= 6 for c in conversations)


def test_corpus_is_messy(conversations):
    texts = [m["content"] for c in conversations for m in c["messages"]]
    user_texts = [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]
    for name, pattern in [
        ("html", HTML),
        ("full-width", FULL_WIDTH_ALNUM),
        ("emoji", EMOJI),
        ("zero-width", ZERO_WIDTH),
    ]:
        assert sum(bool(pattern.search(t)) for t in texts) >= 50, name
    for name, pattern in [("phone", PHONE), ("email", EMAIL), ("id number", ID_NUMBER)]:
        assert sum(bool(pattern.search(t)) for t in user_texts) >= 10, name
    assert any(len(t) > 2000 for t in user_texts)
    assert any(not t.strip() for t in user_texts)

    signatures = Counter(json.dumps(c["messages"], ensure_ascii=False) for c in conversations)
    exact_extra = sum(n - 1 for n in signatures.values())
    assert 0.02 * len(conversations) <= exact_extra <= 0.08 * len(conversations)

    def fold(text: str) -> str:
        return re.sub(r"[\W_]+", "", EMOJI.sub("", text)).lower()

    folded = Counter(json.dumps([fold(m["content"]) for m in c["messages"]]) for c in conversations)
    near_extra = sum(n - 1 for n in folded.values()) - exact_extra
    assert near_extra >= 0.02 * len(conversations)

    from opencc import OpenCC

    t2s = OpenCC("t2s").convert
    zh = [c for c in conversations if c["lang"] == "zh"]
    traditional = [c for c in zh if t2s(c["messages"][0]["content"]) != c["messages"][0]["content"]]
    assert 0.02 * len(conversations) <= len(traditional) <= 0.06 * len(conversations)


def test_order_numbers_do_not_look_like_cards_or_phones(gen, conversations):
    orders = {m for c in conversations for t in c["messages"] for m in ORDER_13.findall(t["content"])}
    assert len(orders) > 100
    assert not [o for o in orders if gen.luhn_valid(o) or PHONE.search(o)]


def test_every_synonym_variant_is_used_and_the_lexicon_is_consistent(gen, conversations):
    pairs = lexicon_pairs()
    assert dict(pairs) == gen.LEXICON
    injected = {v for variants in gen.SYNONYMS.values() for v in variants}
    assert injected <= set(gen.LEXICON) | set(gen.LEXICON.values()), "an injected variant the lexicon misses"
    variants = [v for v, _ in pairs]
    canonicals = {c for _, c in pairs}
    assert len(variants) == len(set(variants)), "a variant with two canonical forms"
    assert not canonicals & set(variants), "a canonical form listed as a variant"
    assert {"好的", "okay", "谢谢", "thanks"} <= canonicals
    user_texts = [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]
    for variant in variants:
        if CJK.search(variant):
            pattern = re.compile(rf"(?<![\u3400-\u9fff]){re.escape(variant)}(?![\u3400-\u9fff])")
        else:
            pattern = re.compile(rf"\b{re.escape(variant)}\b")
        assert any(pattern.search(t) for t in user_texts), f"{variant!r} never appears in a user turn"


def test_parallel_pairs_are_clean_translations(parallel_rows):
    assert parallel_rows[0] == "zh\ten"
    assert parallel_rows[-1] == ""
    rows = [r.split("\t") for r in parallel_rows[1:-1]]
    assert 4000 <= len(rows) <= 8000
    assert len({tuple(r) for r in rows}) == len(rows)
    for row in rows:
        assert len(row) == 2, row
        zh, en = row
        assert CJK.search(zh) and re.search("[A-Za-z]", en), row
        assert not HTML.search(zh + en) and not EMOJI.search(zh + en) and not ZERO_WIDTH.search(zh + en), row
        assert not FULL_WIDTH_ALNUM.search(zh + en), row
    assert any(r[0].startswith("今日") and r[1].startswith("Today in ") and "℃" in r[0] for r in rows)


def test_gazetteers(conversations):
    corpus = "\n".join(m["content"] for c in conversations for m in c["messages"])
    for lang in ("zh", "en"):
        for kind in ("city", "product", "person", "date"):
            entities = (
                (LEXICONS / "gazetteers" / lang / f"{kind}.txt").read_text(encoding="utf-8").splitlines()
            )
            assert entities and all(e and e == e.strip() for e in entities), (lang, kind)
            assert len(set(entities)) == len(entities), (lang, kind)
            assert any(e in corpus for e in entities), (lang, kind)
            if kind != "date":  # extras give entity replacement somewhere to go
                assert any(e not in corpus for e in entities), (lang, kind)
    en_cities = (LEXICONS / "gazetteers/en/city.txt").read_text(encoding="utf-8").splitlines()
    zh_products = (LEXICONS / "gazetteers/zh/product.txt").read_text(encoding="utf-8").splitlines()
    assert {"York", "New York"} <= set(en_cities)
    assert any(a != b and a in b for a in zh_products for b in zh_products)

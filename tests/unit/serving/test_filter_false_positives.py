"""False positives of the sensitive-word filter on real and demo text (issue 12, item 3).

bench/filter_false_positives.py measures the same against the previous matcher and times both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatforge.serving.filters import SensitiveFilter

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shipped() -> SensitiveFilter:
    return SensitiveFilter.from_files(
        [ROOT / "lexicons/sensitive/zh.txt", ROOT / "lexicons/sensitive/en.txt"], mode="block"
    )


def _demo(role: str) -> list[str]:
    data = json.loads((ROOT / "data/raw/demo/conversations.json").read_text(encoding="utf-8"))
    return [m["content"] for c in data["conversations"] for m in c["messages"] if m["role"] == role]


@pytest.mark.parametrize("role", ["user", "assistant"])
def test_demo_turns_have_no_false_positives(shipped: SensitiveFilter, role: str):
    # the demo corpus is customer-service text without any abuse: every match would be a false
    # positive. Today none of the 7,718 user (or assistant) turns matches: rate 0 <= 0.5 %
    turns = _demo(role)
    assert len(turns) == 7718
    matched = [(t, shipped.find(t)) for t in turns if shipped.find(t)]
    assert len(matched) / len(turns) <= 0.005
    assert matched == []


def _xdailydialog(shared: Path, lang: str) -> list[str]:
    out = []
    names = [f"{lang}_test_human.txt", f"{lang}_dev_human.txt"]
    names.append("parallel_1k_dialogues_text_Zh.txt" if lang == "zh" else "parallel_1k_dialogues_text_En.txt")
    for name in names:
        for line in (shared / "xdailydialog" / name).read_text(encoding="utf-8").splitlines():
            out.extend(u.strip() for u in line.split("\t")[0].split("__eou__") if u.strip())
    return out


def test_real_dialogue_matches_are_only_real_uses_of_the_words(
    shared_datasets: Path, shipped: SensitiveFilter
):
    # XDailyDialog, 23,127 utterances per language, with DailyDialog's spaced punctuation
    # ("No . 115", "driver ’ s"). The previous matcher matched exactly these too (with the same
    # lexicon): separators, repeats and look-alikes add no match here
    # (the first 24 characters of each matched utterance)
    matched = {
        (t[:24], tuple(sorted({term for *_, term in shipped.find(t)})))
        for lang in ("zh", "en")
        for t in _xdailydialog(shared_datasets, lang)
        if shipped.find(t)
    }
    assert matched == {
        ("你涉嫌非法藏匿毒品，所以我们要拘留你。我们在你家", ("海洛因",)),  # a police officer: a mention
        ("去死吧你。", ("去死吧",)),  # abuse
        ("去死吧你。这场车祸是你的错。", ("去死吧",)),  # abuse
        ("天哪。该死。。。去他妈的，我会烧了他们的店。", ("他妈的",)),  # swearing
        ("她会杀了你的。", ("杀了你",)),  # "she'll kill you": a warning, the term itself
        ("I stay at No . 115 Fucki", ("fucking",)),  # a (real) street name: the lexicon's word
        ("I know where to put my c", ("idiot",)),  # "talking to me like I'm an idiot": the word itself
        ("Well , he did it anyway ", ("shit",)),  # swearing
    }

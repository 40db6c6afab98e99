"""Benchmark: false positives, disguise recall and speed of the sensitive-word filter, the skeleton
matcher (chatforge.serving.filters, NORMALISER_VERSION 2) against the matcher it replaced.

    python bench/filter_false_positives.py
    python bench/filter_false_positives.py --turns 10000 --repeats 5

Baseline `plain`: the previous filter (NORMALISER_VERSION 1), reimplemented below: NFKC, case
folding, format characters dropped, OpenCC t2s, whitespace runs as one space, Aho-Corasick substring
search, latin terms only on ASCII word boundaries. No separators, repeats or look-alikes.

Both run with the shipped lexicons (lexicons/sensitive/{zh,en}.txt) over:
- demo user turns (data/raw/demo/conversations.json): customer-service text with no abuse in it, so
  every match there is a false positive. This is the headline false-positive rate;
- demo assistant turns (the output filter sees these);
- real dialogue nobody here shaped, when ../shared/datasets is there: XDailyDialog zh/en utterances
  and CrossWOZ turns. A match there is not necessarily a false positive (people do swear); all
  matched sentences are listed for a reader to judge;
- the Chinese real text again with its clause punctuation (，。) retyped as a space, a half-width
  , or ., an emoji, "/" and "-": what a different typing style would add in matches.

Recall: every term of both lexicons disguised with separators between all its characters, a
stuttered character and look-alike letters (the unit tests' matrix, smaller): the share caught.

Speed: filtering --turns demo user turns (the list cycled), best of --repeats, both matchers; and
the same turns each with a disguised term appended (the slow path: every turn is analysed).

Prints a summary and writes reports/bench/filter_false_positives.json.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
import unicodedata
import zipfile
from pathlib import Path
from typing import Annotated

import ahocorasick
import typer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
LEXICONS = [ROOT / "lexicons/sensitive/zh.txt", ROOT / "lexicons/sensitive/en.txt"]


class PlainFilter:
    """The previous matcher (NORMALISER_VERSION 1), kept here as the named baseline."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = sorted({self.normalise(t)[0].strip() for t in terms} - {""})
        self.automaton = ahocorasick.Automaton()
        for term in self.terms:
            self.automaton.add_word(term, term)
        self.automaton.make_automaton()

    @staticmethod
    @functools.lru_cache(maxsize=65536)
    def fold(char: str) -> str:
        if unicodedata.category(char) == "Cf":
            return ""
        folded = unicodedata.normalize("NFKC", char).casefold()
        if any("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in folded):
            folded = _t2s().convert(folded)
        return folded

    @classmethod
    def normalise(cls, text: str) -> tuple[str, list[int]]:
        out: list[str] = []
        origin: list[int] = []
        for i, char in enumerate(text):
            folded = cls.fold(char)
            if folded.isspace():
                if out and out[-1] == " ":
                    continue
                folded = " "
            out.append(folded)
            origin.extend([i] * len(folded))
        return "".join(out), origin

    def find(self, text: str) -> list[tuple[int, int, str]]:
        folded, origin = self.normalise(text)
        spans = []
        for end, term in self.automaton.iter(folded):
            start = end - len(term) + 1
            if _ascii_word(term[0]) and start > 0 and _ascii_word(folded[start - 1]):
                continue
            if _ascii_word(term[-1]) and end + 1 < len(folded) and _ascii_word(folded[end + 1]):
                continue
            spans.append((origin[start], origin[end] + 1, term))
        return spans


def _ascii_word(char: str) -> bool:
    return char.isascii() and char.isalnum()


@functools.cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def demo_turns(role: str) -> list[str]:
    data = json.loads((ROOT / "data/raw/demo/conversations.json").read_text(encoding="utf-8"))
    return [m["content"] for c in data["conversations"] for m in c["messages"] if m["role"] == role]


def xdailydialog(lang: str) -> list[str]:
    out = []
    names = [f"{lang}_test_human.txt", f"{lang}_dev_human.txt"]
    names.append("parallel_1k_dialogues_text_Zh.txt" if lang == "zh" else "parallel_1k_dialogues_text_En.txt")
    for name in names:
        for line in (SHARED / "xdailydialog" / name).read_text(encoding="utf-8").splitlines():
            out.extend(u.strip() for u in line.split("\t")[0].split("__eou__") if u.strip())
    return out


def crosswoz() -> list[str]:
    out = []
    for split in ("val", "test"):
        with zipfile.ZipFile(SHARED / "crosswoz" / f"{split}.json.zip") as z:
            data = json.loads(z.read(f"{split}.json"))
        out.extend(m["content"] for d in data.values() for m in d["messages"])
    return out


def scan(matcher, turns: list[str]) -> dict:
    matched = [
        (t, sorted({term for _, _, term in spans})) for t in turns for spans in [matcher.find(t)] if spans
    ]
    return {
        "turns": len(turns),
        "matched": len(matched),
        "rate": round(len(matched) / len(turns), 6) if turns else None,
        "sentences": [
            {"text": t, "terms": terms} for t, terms in sorted({(t, tuple(x)) for t, x in matched})
        ],
    }


def disguises(term: str) -> list[str]:
    cjk = any("\u4e00" <= c <= "\u9fff" for c in term)
    out = []
    for sep in [" ", ".", "@#￥%", "-", "*", "_"] if cjk else [".", "-", "_", "*", "@#$%", " "]:
        out.append(" ".join(sep.join(w) for w in term.split()))
    for i, char in enumerate(term):
        if char != " ":
            out.append(term[:i] + char * 3 + term[i + 1 :])
    look = {"a": "а", "c": "с", "e": "е", "i": "і", "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у"}
    out.extend(term[:i] + look[c] + term[i + 1 :] for i, c in enumerate(term) if c in look)
    return out


def best_time(matcher, turns: list[str], repeats: int) -> float:
    for t in turns:  # warm the per-character caches
        matcher.find(t)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for t in turns:
            matcher.find(t)
        best = min(best, time.perf_counter() - started)
    return best


def main(
    turns: Annotated[int, typer.Option(help="Demo user turns (cycled) for the timing.")] = 10_000,
    repeats: Annotated[int, typer.Option(help="Timing repeats; the best counts.")] = 5,
    out: Annotated[Path, typer.Option(help="JSON to write.")] = ROOT
    / "reports/bench/filter_false_positives.json",
) -> None:
    from chatforge.io import write_json
    from chatforge.serving.filters import NORMALISER_VERSION, SensitiveFilter, read_lexicon

    terms = [t for path in LEXICONS for t in read_lexicon(path)]
    matchers = {"skeleton": SensitiveFilter(terms, mode="block"), "plain": PlainFilter(terms)}
    corpora = {"demo_user": demo_turns("user"), "demo_assistant": demo_turns("assistant")}
    if SHARED.exists():
        corpora |= {
            "xdailydialog_zh": xdailydialog("zh"),
            "xdailydialog_en": xdailydialog("en"),
            "crosswoz": crosswoz(),
        }
        chinese = corpora["xdailydialog_zh"] + corpora["crosswoz"]
        for name, sep in [("space", " "), ("ascii_comma", ","), ("ascii_dot", "."), ("emoji", "😂"), ("slash", "/"),
                          ("hyphen", "-")]:  # fmt: skip
            corpora[f"zh_retyped_{name}"] = [t.replace("，", sep).replace("。", sep) for t in chinese]
    else:
        typer.echo(f"{SHARED} missing: only the demo corpus is scanned.", err=True)
    report: dict = {
        "normaliser_version": NORMALISER_VERSION,
        "baseline": "plain: the previous matcher (NORMALISER_VERSION 1), no separators/repeats/look-alikes",
        "lexicon_terms": len(terms),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "corpora": {},
    }
    typer.echo(f"{'corpus':>24} {'turns':>7} {'skeleton':>18} {'plain':>18} {'ratio':>6}")
    for name, texts in corpora.items():
        row = {m: scan(matcher, texts) for m, matcher in matchers.items()}
        new, old = row["skeleton"], row["plain"]
        row["ratio_skeleton_vs_plain"] = round(new["matched"] / old["matched"], 3) if old["matched"] else None
        report["corpora"][name] = row
        typer.echo(
            f"{name:>24} {len(texts):7d} {new['matched']:6d} ({new['rate']:8.4%}) {old['matched']:6d} "
            f"({old['rate']:8.4%}) {row['ratio_skeleton_vs_plain'] if row['ratio_skeleton_vs_plain'] else '-':>6}"
        )
    for name in corpora:
        if name.startswith("zh_retyped"):
            continue
        for s in report["corpora"][name]["skeleton"]["sentences"]:
            typer.echo(f"  skeleton match in {name}: {s['terms']} {s['text'][:100]!r}")
    demo = report["corpora"]["demo_user"]
    report["false_positive_rate_demo_user"] = {m: demo[m]["rate"] for m in matchers}

    cases = [(term, d) for term in terms for d in disguises(term)]
    recall = {}
    for m, matcher in matchers.items():
        caught = sum(any(t == " ".join(PlainFilter.normalise(term)[0].split()) for *_, t in matcher.find(d))
                     for term, d in cases)  # fmt: skip
        recall[m] = {"disguises": len(cases), "caught": caught, "rate": round(caught / len(cases), 4)}
    report["disguise_recall"] = recall
    typer.echo(f"disguise recall: skeleton {recall['skeleton']['rate']:.2%}, plain {recall['plain']['rate']:.2%} "
               f"of {len(cases)} disguised terms")  # fmt: skip

    user = corpora["demo_user"]
    timed = [user[i % len(user)] for i in range(turns)]
    seconds = {m: best_time(matcher, timed, repeats) for m, matcher in matchers.items()}
    # the same turns, each with a disguised term appended: every one goes through the gap analysis
    loaded = [f"{t} {cases[i % len(cases)][1]}" for i, t in enumerate(timed)]
    seconds_loaded = {m: best_time(matcher, loaded, repeats) for m, matcher in matchers.items()}
    report["timing"] = {
        "turns": turns,
        "repeats": repeats,
        "seconds_best": {m: round(s, 4) for m, s in seconds.items()},
        "microseconds_per_turn": {m: round(s / turns * 1e6, 2) for m, s in seconds.items()},
        "ratio_skeleton_vs_plain": round(seconds["skeleton"] / seconds["plain"], 3),
        "with_a_disguised_term_each": {
            "seconds_best": {m: round(s, 4) for m, s in seconds_loaded.items()},
            "ratio_skeleton_vs_plain": round(seconds_loaded["skeleton"] / seconds_loaded["plain"], 3),
        },
    }
    typer.echo(f"{turns} demo user turns: skeleton {seconds['skeleton']:.3f} s, plain {seconds['plain']:.3f} s "
               f"({report['timing']['ratio_skeleton_vs_plain']}x); each with a disguised term appended: "
               f"skeleton {seconds_loaded['skeleton']:.3f} s, plain {seconds_loaded['plain']:.3f} s")  # fmt: skip
    typer.echo(
        f"false-positive rate on demo user turns: skeleton {demo['skeleton']['rate']:.4%}, "
        f"plain {demo['plain']['rate']:.4%}"
    )
    write_json(report, out)
    typer.echo(f"saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    typer.run(main)

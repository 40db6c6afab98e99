"""Benchmark: translation quality and speed of the translator behind back-translation.

    python bench/backtranslation_quality.py                        # the default translator (models/translator)
    python bench/backtranslation_quality.py path/to/other/folder   # also any other translator folder(s)

Quality: sacrebleu BLEU and chrF against the human translations of XDailyDialog
(../shared/datasets/xdailydialog/parallel_1k_dialogues_text_{En,Zh}.txt: dialogues split on __eou__,
utterances aligned by line and position; dialogues whose utterance counts differ are skipped), zh->en
(13a tokenisation) and en->zh (sacrebleu's zh tokenisation), plus the same on the held-out demo pairs
the translator stage kept out of training. The named baseline for quality is `copy_source` (the
untranslated source scored against the reference: what no translation at all would get).

Speed: sentences per second translating the same sentences batched (augment.back_translation.batch_size)
against the baseline `one_at_a_time` (batch size 1); the ratio is printed.

The default translator is trained from scratch on the demo corpus only, so on DailyDialog (open-domain
chit-chat it never saw) its BLEU is low; the held-out demo BLEU shows what it does in its own domain.
Writes reports/bench/backtranslation_quality.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parents[1]
XDD = ROOT.parent / "shared" / "datasets" / "xdailydialog"


def _detok_en(text: str) -> str:
    # DailyDialog English is pre-tokenised ("don ’ t", "Beijing ."); undo that so BLEU compares text
    text = text.replace(" ’ ", "’").replace(" ' ", "'")
    text = re.sub(r"\s+([.,!?;:%])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def load_xdailydialog(limit: int, max_chars: int) -> tuple[list[str], list[str]]:
    zh_lines = (XDD / "parallel_1k_dialogues_text_Zh.txt").read_text(encoding="utf-8").splitlines()
    en_lines = (XDD / "parallel_1k_dialogues_text_En.txt").read_text(encoding="utf-8").splitlines()
    zh_out, en_out, skipped = [], [], 0
    for zh_line, en_line in zip(zh_lines, en_lines, strict=True):
        zh_utts = [u.strip() for u in zh_line.split("__eou__") if u.strip()]
        en_utts = [u.strip() for u in en_line.split("__eou__") if u.strip()]
        if len(zh_utts) != len(en_utts):
            skipped += 1
            continue
        for z, e in zip(zh_utts, en_utts, strict=True):
            if len(z) <= max_chars and len(e) <= 3 * max_chars:
                zh_out.append(z)
                en_out.append(_detok_en(e))
        if len(zh_out) >= limit:
            break
    return zh_out[:limit], en_out[:limit]


def scores(hyp_en: list[str], ref_en: list[str], hyp_zh: list[str], ref_zh: list[str]) -> dict[str, float]:
    import sacrebleu

    return {
        "bleu_zh_en": round(sacrebleu.corpus_bleu(hyp_en, [ref_en], tokenize="13a").score, 2),
        "bleu_en_zh": round(sacrebleu.corpus_bleu(hyp_zh, [ref_zh], tokenize="zh").score, 2),
        "chrf_zh_en": round(sacrebleu.corpus_chrf(hyp_en, [ref_en]).score, 2),
        "chrf_en_zh": round(sacrebleu.corpus_chrf(hyp_zh, [ref_zh]).score, 2),
    }


def bench_folder(folder: Path, zh: list[str], en: list[str], *, batch_size: int, speed_n: int,
                 heldout) -> dict:
    from chatforge.modeling import translate as tr
    from chatforge.modeling.translator_train import bleu_scores

    batched = tr.load_translator(folder, options=tr.DecodeOptions(batch_size=batch_size))
    t0 = time.perf_counter()
    hyp_en = batched.translate(zh, src="zh", tgt="en")
    hyp_zh = batched.translate(en, src="en", tgt="zh")
    quality_s = time.perf_counter() - t0
    sample = zh[:speed_n]
    t0 = time.perf_counter()
    batched.translate(sample, src="zh", tgt="en")
    batched_s = time.perf_counter() - t0
    single = tr.load_translator(folder, options=tr.DecodeOptions(batch_size=1))
    t0 = time.perf_counter()
    single.translate(sample, src="zh", tgt="en")
    single_s = time.perf_counter() - t0
    result = {
        "xdailydialog": scores(hyp_en, en, hyp_zh, zh),
        "quality_seconds": round(quality_s, 2),
        "throughput": {
            "sentences": len(sample),
            "batched_sentences_per_s": round(len(sample) / batched_s, 2),
            "one_at_a_time_sentences_per_s": round(len(sample) / single_s, 2),
            "batched_vs_one_at_a_time": round(single_s / batched_s, 2),
        },
        "examples": [{"zh": z, "en_ref": e, "en_hyp": h} for z, e, h in zip(zh[:5], en[:5], hyp_en[:5], strict=True)],
    }
    if heldout is not None:
        result["demo_heldout"] = bleu_scores(batched, heldout)
    return result


def main(
    folders: Annotated[list[Path] | None, typer.Argument(help="Extra translator folders to benchmark.")] = None,
    default: Annotated[Path, typer.Option(help="The default translator folder.")] = ROOT / "models/translator",
    limit: Annotated[int, typer.Option(help="Aligned XDailyDialog utterances per direction.")] = 300,
    speed_n: Annotated[int, typer.Option(help="Sentences for the throughput comparison.")] = 64,
    out: Annotated[Path, typer.Option(help="JSON to write.")] = ROOT / "reports/bench/backtranslation_quality.json",
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from chatforge.io import write_json
    from chatforge.modeling import translator_train as tt
    from chatforge.params import load_section

    torch.set_num_threads(min(2, torch.get_num_threads()))
    targets = [default, *(folders or [])]
    if not default.exists():
        typer.echo(f"{default} missing: build it with `dvc repro translator` first.", err=True)
        raise typer.Exit(1)
    tparams = load_section("translator", path=ROOT / "params.yaml")
    batch_size = load_section("augment", path=ROOT / "params.yaml").back_translation.batch_size
    heldout = None
    demo = ROOT / "data/raw/demo/parallel.tsv"
    if demo.exists():
        pairs = tt.read_parallel([demo], max_pairs=tparams.max_pairs).pairs
        heldout = tt.split_heldout(pairs, fraction=tparams.heldout_fraction, max_heldout=tparams.max_heldout,
                                   seed=tparams.seed)[1]
    zh, en = load_xdailydialog(limit, max_chars=60)
    report: dict = {
        "dataset": "XDailyDialog parallel_1k (human zh translations of DailyDialog)",
        "utterances_per_direction": len(zh),
        "baseline_copy_source": {"xdailydialog": scores(zh, en, en, zh)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "translators": {},
    }
    for folder in targets:
        typer.echo(f"benchmarking {folder} ...")
        r = bench_folder(folder, zh, en, batch_size=batch_size, speed_n=speed_n, heldout=heldout)
        report["translators"][str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)] = r
        x, t = r["xdailydialog"], r["throughput"]
        typer.echo(f"  XDailyDialog BLEU zh->en {x['bleu_zh_en']:.2f}  en->zh {x['bleu_en_zh']:.2f}  "
                   f"(copy_source baseline {report['baseline_copy_source']['xdailydialog']['bleu_zh_en']:.2f} / "
                   f"{report['baseline_copy_source']['xdailydialog']['bleu_en_zh']:.2f})")
        if "demo_heldout" in r:
            d = r["demo_heldout"]
            typer.echo(f"  demo held-out BLEU zh->en {d['bleu_zh_en']:.2f}  en->zh {d['bleu_en_zh']:.2f}")
        typer.echo(f"  throughput {t['batched_sentences_per_s']:.1f} sent/s batched vs "
                   f"{t['one_at_a_time_sentences_per_s']:.1f} one at a time: {t['batched_vs_one_at_a_time']:.2f}x")
    write_json(report, out)
    typer.echo(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    typer.run(main)

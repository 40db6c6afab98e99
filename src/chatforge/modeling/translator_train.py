"""Train the offline default translator: one small bidirectional zh<->en MarianMT model from scratch.

No en<->zh translation model ships offline, yet back-translation must work in the default build. One
model serves both directions: the source carries the target-language tag (`>>en<< 你好`, `>>zh<< hello`),
as multilingual Marian models do, so both directions share the encoder, decoder and one BPE
vocabulary trained with `tokenizers` on both languages. Chinese is split into single characters before
BPE: with a few thousand pairs, character units generalise better than whole-sentence merges.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from chatforge.io import progress
from chatforge.params import TranslatorParams

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", ">>zh<<", ">>en<<"]  # ids 0..4, fixed
_CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"


class ParallelDataError(ValueError):
    """Parallel pairs that cannot be used; the message says which file and what to fix."""


@dataclass
class ParallelPairs:
    pairs: pl.DataFrame  # columns zh, en
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> lines


def read_parallel(paths: Sequence[Path | str], *, max_pairs: int | None = None) -> ParallelPairs:
    """Read zh/en TSV files with a header naming the `zh` and `en` columns; a folder means its *.tsv files.

    Lines with a wrong field count or an empty side are counted per reason, never silently dropped.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.tsv")))
        elif p.exists():
            files.append(p)
        else:
            raise ParallelDataError(f"{p}: parallel file not found; write zh<TAB>en pairs with a header line `zh\ten`")
    rows: list[tuple[str, str]] = []
    rejected: dict[str, int] = {}
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = [h.strip().lower() for h in next(reader, [])]
            if "zh" not in header or "en" not in header:
                raise ParallelDataError(f"{f}: header must name the columns `zh` and `en` (got {header}); add `zh\ten`")
            zi, ei = header.index("zh"), header.index("en")
            for line in reader:
                if len(line) != len(header):
                    rejected["field_count"] = rejected.get("field_count", 0) + 1
                elif not line[zi].strip() or not line[ei].strip():
                    rejected["empty_side"] = rejected.get("empty_side", 0) + 1
                else:
                    rows.append((line[zi].strip(), line[ei].strip()))
    frame = pl.DataFrame(rows, schema={"zh": pl.String, "en": pl.String}, orient="row").unique(maintain_order=True)
    if max_pairs is not None:
        frame = frame.head(max_pairs)
    if frame.height < 2:
        raise ParallelDataError(f"{', '.join(map(str, files)) or 'no *.tsv files'}: fewer than 2 usable pairs")
    return ParallelPairs(frame, rejected)


def split_heldout(pairs: pl.DataFrame, *, fraction: float, max_heldout: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Held-out pairs chosen by a hash of their text, so adding pairs never moves an existing one."""
    def bucket(zh: str) -> float:
        return int(hashlib.sha256(f"{seed}:{zh}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    scored = pairs.with_columns(pl.col("zh").map_elements(bucket, return_dtype=pl.Float64).alias("_b"))
    held = scored.filter(pl.col("_b") < fraction).sort("_b").head(max_heldout)
    if held.height == 0:
        held = scored.sort("_b").head(1)
    # a sentence in both sets would inflate BLEU: drop held-out texts from training on either side
    train = scored.filter(~pl.col("zh").is_in(held["zh"].implode()) & ~pl.col("en").is_in(held["en"].implode()))
    return train.drop("_b"), held.drop("_b")


def train_tokenizer(texts: Sequence[str], *, vocab_size: int, max_len_tokens: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="first"), pre_tokenizers.Split(Regex(_CJK), behavior="isolated")]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=[">>zh<<", ">>en<<"], model_max_length=max_len_tokens,
    )


def build_model(vocab_size: int, params: TranslatorParams):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=params.d_model,
        encoder_layers=params.layers, decoder_layers=params.layers,
        encoder_attention_heads=params.heads, decoder_attention_heads=params.heads,
        encoder_ffn_dim=params.ffn_dim, decoder_ffn_dim=params.ffn_dim, dropout=params.dropout,
        max_position_embeddings=max(128, params.max_len_tokens * 2), scale_embedding=True,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
        share_encoder_decoder_embeddings=True,
    )
    model = MarianMTModel(config)
    model.generation_config.max_new_tokens = params.max_len_tokens
    model.generation_config.num_beams = 1
    return model


def directional_examples(pairs: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Both directions of every pair: (`>>en<< zh`, en) and (`>>zh<< en`, zh)."""
    zh, en = pairs["zh"].to_list(), pairs["en"].to_list()
    return [f">>en<< {z}" for z in zh] + [f">>zh<< {e}" for e in en], en + zh


@dataclass
class TrainedTranslator:
    model: object
    tokenizer: object
    losses: list[float]  # mean training loss per logging window
    metrics: dict[str, float | int]


def train_translator(pairs: pl.DataFrame, params: TranslatorParams) -> TrainedTranslator:
    """Train the bidirectional model on `pairs` (zh, en) for params.max_steps steps, seeded."""
    import torch
    from transformers import get_cosine_schedule_with_warmup
    from transformers.models.marian.modeling_marian import shift_tokens_right

    torch.manual_seed(params.seed)
    tokenizer = train_tokenizer(pairs["zh"].to_list() + pairs["en"].to_list(),
                                vocab_size=params.vocab_size, max_len_tokens=params.max_len_tokens)
    model = build_model(len(tokenizer), params)
    sources, targets = directional_examples(pairs)
    enc = tokenizer(sources, truncation=True, max_length=params.max_len_tokens)["input_ids"]
    lab = tokenizer(text_target=targets, truncation=True, max_length=params.max_len_tokens)["input_ids"]
    from chatforge.runtime.device import accelerator

    acc = accelerator()  # the accelerator when there is one (train's rule); the model stays on it
    model.to(acc.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, params.warmup_steps, params.max_steps)
    optimizer = acc.prepare_optimizer(optimizer, device_placement=False)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=params.label_smoothing)
    gen = torch.Generator().manual_seed(params.seed)
    order: list[int] = []
    losses: list[float] = []
    window: list[float] = []
    model.train()
    for step in progress(range(params.max_steps), total=params.max_steps, desc="translator steps"):
        if len(order) < params.batch_size:
            order += torch.randperm(len(enc), generator=gen).tolist()
        batch, order = order[: params.batch_size], order[params.batch_size :]
        x = _pad([enc[i] for i in batch], 0).to(acc.device)
        y = _pad([lab[i] for i in batch], -100).to(acc.device)
        # decoder inputs passed directly (not labels=): the model would otherwise compute a second loss
        decoder_in = shift_tokens_right(y, pad_token_id=0, decoder_start_token_id=0)
        with acc.autocast():
            logits = model(input_ids=x, attention_mask=(x != 0).long(), decoder_input_ids=decoder_in).logits
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        if len(window) == 50 or step == params.max_steps - 1:
            losses.append(round(sum(window) / len(window), 4))
            window = []
    model.eval()
    metrics = {"train_pairs": pairs.height, "steps": params.max_steps, "final_loss": losses[-1],
               "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}
    return TrainedTranslator(model, tokenizer, losses, metrics)


def _pad(rows: list[list[int]], value: int):
    import torch

    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def bleu_scores(translator, heldout: pl.DataFrame) -> dict[str, float]:
    """sacrebleu BLEU and chrF both ways; Chinese targets use sacrebleu's `zh` tokenizer."""
    import sacrebleu

    zh, en = heldout["zh"].to_list(), heldout["en"].to_list()
    to_en = translator.translate(zh, src="zh", tgt="en")
    to_zh = translator.translate(en, src="en", tgt="zh")
    return {
        "bleu_zh_en": round(sacrebleu.corpus_bleu(to_en, [en], tokenize="13a").score, 2),
        "bleu_en_zh": round(sacrebleu.corpus_bleu(to_zh, [zh], tokenize="zh").score, 2),
        "chrf_zh_en": round(sacrebleu.corpus_chrf(to_en, [en]).score, 2),
        "chrf_en_zh": round(sacrebleu.corpus_chrf(to_zh, [zh]).score, 2),
    }


def fetch_pretrained(source: str, *, kind: str, trust_remote_code: bool):
    """A configured translation model (local folder or hub id) as (model, tokenizer), to copy into the build."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        if kind == "auto":
            kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal_lm"
        auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        model = auto.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ParallelDataError(
            f"translator.pretrained = {source!r} cannot be loaded ({exc}). Use a local model folder, a hub id "
            "while online, or null to train the offline default."
        ) from None
    return model, tokenizer


def save_translator(model, tokenizer, folder: Path, *, details: dict) -> None:
    """Write a translator model folder (the caller publishes it atomically) with its chatforge.json."""
    import json

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # family "translator": the manifest schema lists model families the serving side loads; this
    # folder is only read by augment (modeling/translate.py), so it is written as plain JSON
    manifest = {"family": "translator", "variant": "translator", "parent": details.get("parent"),
                "base": None, "data_sha256": details.get("data_sha256"),
                "params_sha256": details.get("params_sha256"), "details": details}
    (folder / "chatforge.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")


def unused_reason(*, enabled: bool, translator: str | None) -> str | None:
    """Why augment reads no translator this stage would build (augment.back_translation.`enabled`
    false, or its `translator` names its own model), or None when it does. The stage then records
    the reason instead of training: enabling back-translation changes these params, so the stage
    reruns and trains then."""
    if not enabled:
        return "augment.back_translation.enabled is false"
    if translator:
        return "augment.back_translation.translator names its own model"
    return None


@dataclass
class BuiltTranslator:
    model: object
    tokenizer: object
    data: ParallelPairs  # every pair read, with the rejected-line counts
    heldout: pl.DataFrame  # columns zh, en: the pairs kept out of training, for `score_translator`
    stats: dict  # training metrics (or nothing for a copied model) + "source": "trained" or the pretrained name
    details: dict  # what the folder's chatforge.json records: stats, parent, data and params hashes


def build_translator(pairs: Sequence[Path | str], params: TranslatorParams) -> BuiltTranslator:
    """Read the parallel TSVs `pairs`, hold out translator.heldout_fraction (at most max_heldout),
    and train the compact zh<->en model on the rest, or copy translator.pretrained in. Raises
    ParallelDataError naming the file/line or the setting that cannot be used."""
    import json

    data = read_parallel(pairs, max_pairs=params.max_pairs)
    train, heldout = split_heldout(data.pairs, fraction=params.heldout_fraction, max_heldout=params.max_heldout,
                                   seed=params.seed)
    if params.pretrained:
        model, tokenizer = fetch_pretrained(params.pretrained, kind=params.kind, trust_remote_code=params.trust_remote_code)
        stats: dict = {"source": params.pretrained}
    else:
        trained = train_translator(train, params)
        model, tokenizer, stats = trained.model, trained.tokenizer, {**trained.metrics, "source": "trained"}
    data_sha = hashlib.sha256(data.pairs.write_csv().encode()).hexdigest()
    params_sha = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()
    details = {**stats, "parent": stats["source"], "data_sha256": data_sha, "params_sha256": params_sha}
    return BuiltTranslator(model, tokenizer, data, heldout, stats, details)


def score_translator(folder: Path, built: BuiltTranslator, params: TranslatorParams) -> dict[str, float | int]:
    """The stage's metrics: training stats, held-out BLEU/chrF both ways (scored through the loading
    path augment uses, chatforge.modeling.translate.load_translator, with translator.eval_num_beams),
    pair counts and rejected lines per reason."""
    from chatforge.modeling.translate import DecodeOptions, load_translator

    translator = load_translator(folder, kind=params.kind, options=DecodeOptions(num_beams=params.eval_num_beams),
                                 trust_remote_code=params.trust_remote_code)
    scores = bleu_scores(translator, built.heldout)
    return {**{k: v for k, v in built.stats.items() if k != "source"}, **scores, "pairs": built.data.pairs.height,
            "heldout_pairs": built.heldout.height,
            **{f"rejected_lines_{k}": v for k, v in sorted(built.data.rejected.items())}}

"""Helpers for the train tests: small inline turns tables and tiny base folders built from configs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl

from chatforge.data.schema import TURNS_SCHEMA, conform
from chatforge.modeling.base import resolve_base
from chatforge.params import ModelParams, TrainParams
from chatforge.runtime.folder import Manifest, write_manifest

CITIES = [("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("深圳", "Shenzhen"), ("成都", "Chengdu")]


def turns(n: int = 60, *, seed: int = 0, prefix: str = "c") -> pl.DataFrame:
    """n two- or four-message conversations over 3 intents, zh and en, with templated answers."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        zh_city, en_city = rng.choice(CITIES)
        intent = ["weather", "greeting", "order"][i % 3]
        lang = "zh" if i % 2 else "en"
        pairs = {
            ("weather", "zh"): (f"查询{zh_city}天气", f"今日{zh_city}晴，15-25℃"),
            ("weather", "en"): (f"weather in {en_city}?", f"It is sunny in {en_city} today."),
            ("greeting", "zh"): ("你好", "你好！有什么可以帮您？"),
            ("greeting", "en"): ("hello there", "Hello! How can I help you?"),
            ("order", "zh"): (f"我的订单{rng.randint(100, 999)}在哪", "您的订单正在配送中。"),
            ("order", "en"): (f"where is order {rng.randint(100, 999)}", "Your order is on its way."),
        }
        user, answer = pairs[(intent, lang)]
        msgs = [("user", user), ("assistant", answer)]
        if i % 5 == 0:
            msgs += [("user", "谢谢" if lang == "zh" else "thanks"), ("assistant", "不客气" if lang == "zh" else "You are welcome")]
        for t, (role, content) in enumerate(msgs):
            rows.append({"conversation_id": f"{prefix}{i:04d}", "turn": t, "role": role, "content": content,
                         "lang": lang, "intent": intent, "source": "test", "origin_id": None, "method": "original"})
    return conform(pl.DataFrame(rows, schema_overrides={k: v for k, v in TURNS_SCHEMA.items() if k in ("turn",)}))


def scratch_params(family: str = "causal_lm", **scratch: Any) -> ModelParams:
    sizes = {"layers": 2, "hidden": 64, "heads": 4, "vocab_size": 400, "max_position_embeddings": 256, "min_frequency": 1}
    sizes.update(scratch)
    return ModelParams(family=family, base="scratch", scratch=sizes)


def build_base(tmp: Path, mp: ModelParams, corpus: pl.DataFrame) -> Path:
    base = resolve_base(mp, corpus=corpus["content"].to_list())
    folder = tmp / f"base-{mp.family}-{mp.scratch.encoder}"
    base.model.save_pretrained(folder)
    base.tokenizer.save_pretrained(folder)
    write_manifest(folder, Manifest(family=mp.family, variant="base", parent="scratch", base="scratch"))
    return folder


def tparams(**kw: Any) -> TrainParams:
    defaults: dict[str, Any] = {"lr": 3e-3, "lr_min": 1e-5, "warmup_steps": 2, "batch_size": 4, "max_steps": 6,
                                "max_seq_len": 64, "eval_every_steps": 3, "bleu_samples": 0, "checkpoint_every_steps": 1000,
                                "early_stopping_patience": 0, "max_grad_norm": 1.0}
    defaults.update(kw)
    return TrainParams(**defaults)

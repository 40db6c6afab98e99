"""The training loop for both families, crash-safe and resumable.

Reads top to bottom: check inputs (cheap, before any weights load) -> tokenize -> load the model
with the dropout overrides -> optimizer + cosine schedule -> resume from the newest complete
checkpoint of the same fingerprint -> loop over optimizer steps (freezing state, accumulation,
gradient averaging across processes, clipping, step, log, evaluate, early stopping, checkpoint).
The family (model.family) is chosen once: FAMILIES maps it to CausalLMTraining or
ClassifierTraining, which build the examples, the batches of each epoch, the loss and the val
scores; the loop itself is the same for both.

Data parallelism: accelerate starts the process group (gloo on CPU, nccl on GPUs). Every process
builds the same epoch batches from (seed, epoch) and takes its share of each optimizer step's
micro-batches; gradients are averaged with one all_reduce per optimizer step. That is what DDP
does, done by hand because DDP fixes the set of synchronised parameters when it wraps the model and
progressive unfreezing changes that set during training. The loss of a step is normalised by the
number of target tokens of the whole step across processes, so N processes x G accumulation
steps computes the same update as 1 process x N*G accumulation steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from chatforge.io import progress
from chatforge.modeling import classifier as clf
from chatforge.modeling.data import collate_packed, epoch_batches, pack
from chatforge.modeling.freezing import apply_freezing, find_layer_stack, frozen_layer_count
from chatforge.modeling.schedule import cosine_with_floor
from chatforge.params import ModelParams, TrainParams
from chatforge.runtime.conversation import IGNORE, Conversation, conversations, tokenize_conversations
from chatforge.runtime.folder import read_family
from chatforge.runtime.quality import model_answer_scores

log = logging.getLogger("chatforge.train")

HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "dropout", "hidden_dropout", "resid_pdrop", "classifier_dropout")
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


class TrainError(ValueError):
    """Training cannot start; the message names the params key or input and how to fix it."""


@dataclass
class TrainOutcome:
    model: Any
    tokenizer: Any
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    details: dict[str, Any] = field(default_factory=dict)
    responses: dict[str, dict[str, str]] | None = None
    # this run only, kept out of the metrics (they must be identical on CPU for the same inputs)
    timing: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------ input checks
def check_inputs(
    mp: ModelParams, tp: TrainParams, *, base_dir: Path, train_turns: pl.DataFrame, val_turns: pl.DataFrame
) -> None:
    """Everything that can be checked before a weight is loaded (each error names its key).

    `base_dir` is the folder training starts from: models/base, or with train.init_from: served the
    promoted model's torch folder (chatforge.runtime.promoted.promoted_model), whose weights and
    tokenizer are continued."""
    family = read_family(base_dir)  # ModelFolderError when base_dir is not a model folder
    served = tp.init_from == "served"
    if family != mp.family:
        fix = (f"promote a {mp.family} model, or set train.init_from: base" if served else "run `dvc repro base`")
        raise TrainError(f"model.family is '{mp.family}' but {base_dir} was built as '{family}': {fix}.")
    if served and not any(Path(base_dir).glob("*.safetensors")):
        raise TrainError(
            f"train.init_from is served but the promoted model {base_dir} has no torch weights (*.safetensors): "
            "an incremental round continues a float model folder; promote one (`chatforge promote`) or set "
            "train.init_from: base."
        )
    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    context = config.get("max_position_embeddings") or config.get("n_positions")
    if context and tp.max_seq_len > context:
        raise TrainError(
            f"train.max_seq_len = {tp.max_seq_len} exceeds the model's context (max_position_embeddings = "
            f"{context} in {base_dir}/config.json); set train.max_seq_len <= {context}."
        )
    if tp.precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("train.precision = fp16 needs a CUDA GPU (loss scaling); use fp32 or bf16 on CPU.")
    if tp.num_processes > 1 and torch.cuda.is_available() and torch.cuda.device_count() < tp.num_processes:
        raise TrainError(
            f"train.num_processes = {tp.num_processes} but only {torch.cuda.device_count()} GPUs are visible."
        )
    if train_turns.height == 0:
        raise TrainError("the train data is empty (0 rows): check the upstream stages' metrics (split, balance).")
    if val_turns.height == 0:
        raise TrainError("the val split is empty: evaluation and early stopping need it; raise split.val_fraction.")
    n_conv = train_turns["conversation_id"].n_unique()
    per_step = tp.batch_size * tp.grad_accum_steps * tp.num_processes
    if tp.batch_size > n_conv:
        raise TrainError(
            f"train.batch_size = {tp.batch_size} is larger than the train data ({n_conv} conversations); "
            f"lower train.batch_size."
        )
    if per_step > n_conv:
        raise TrainError(
            f"one optimizer step needs train.batch_size x grad_accum_steps x num_processes = {per_step} "
            f"sequences but the train data has {n_conv} conversations; lower train.batch_size or grad_accum_steps."
        )
    if mp.family == "classifier":
        intents = train_turns["intent"].drop_nulls().n_unique()
        if intents < 2:
            raise TrainError(f"the classifier needs at least 2 intents in the train data, found {intents}.")


def starting_point(tp: TrainParams, model_dir: Path, train_turns: pl.DataFrame) -> tuple[Path, pl.DataFrame, dict[str, Any]]:
    """(the folder training starts from, the turns it trains on, the round's metrics).

    train.init_from base: `model_dir` (models/base) and every train turn, {} (unchanged behaviour).
    train.init_from served, an incremental feedback round: `model_dir` is the promoted model's root
    (models/served, `chatforge promote`), resolved by chatforge.runtime.promoted.promoted_model to the
    torch folder whose weights and tokenizer are continued; the turns are every feedback conversation
    plus a seeded replay sample of train.replay_ratio x as many others (chatforge.data.replay.replay_mix),
    and the metrics its replay_* counts. Raises ModelFolderError (no promoted model) or TrainError (no
    feedback conversation in the train data)."""
    if tp.init_from == "base":
        return model_dir, train_turns, {}
    from chatforge.data.replay import ReplayError, replay_mix
    from chatforge.runtime.promoted import promoted_model

    folder = promoted_model(model_dir)
    try:
        mix = replay_mix(train_turns, ratio=tp.replay_ratio, seed=tp.seed)
    except ReplayError as exc:
        raise TrainError(str(exc)) from None
    log.info("incremental round from %s: %d feedback + %d replay conversations", folder,
             mix.metrics["replay_feedback_conversations"], mix.metrics["replay_conversations"])
    return folder, mix.turns, dict(mix.metrics)


# ----------------------------------------------------------------------------- model loading
def load_for_training(mp: ModelParams, tp: TrainParams, base_dir: Path, *, labels: list[str] | None) -> tuple[Any, Any]:
    """The base folder in float32 (chatforge.runtime.folder.load_torch) with what training adds: the
    dropout overrides, and for a classifier the label head (seeded by model.seed)."""
    from transformers import AutoConfig, AutoTokenizer

    from chatforge.runtime.folder import load_torch

    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=mp.trust_remote_code)
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=mp.trust_remote_code)
    overrides = dropout_overrides(config, hidden=tp.dropout, attention=tp.attention_dropout)
    for key, value in overrides.items():
        setattr(config, key, value)
    if mp.family != "causal_lm":
        assert labels is not None
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
        config.problem_type = "single_label_classification"
        torch.manual_seed(mp.seed)  # the new classification head
    model, tokenizer, _ = load_torch(base_dir, family=mp.family, tokenizer=tokenizer, config=config, dtype=torch.float32,
                                     trust_remote_code=mp.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


def dropout_overrides(config: Any, *, hidden: float | None, attention: float | None) -> dict[str, float]:
    """Map train.dropout / train.attention_dropout onto the config keys this architecture has."""
    out: dict[str, float] = {}
    for value, keys, name in ((hidden, HIDDEN_DROPOUT_KEYS, "dropout"), (attention, ATTENTION_DROPOUT_KEYS, "attention_dropout")):
        if value is None:
            continue
        present = [k for k in keys if hasattr(config, k)]
        if not present:
            raise TrainError(
                f"train.{name} = {value}: a {config.model_type} model has no such dropout "
                f"(its config has none of {', '.join(keys)}); set train.{name}: null."
            )
        out.update({k: value for k in present})
    return out


# ------------------------------------------------------------------------------------ losses
def causal_loss_sums(model: Any, batch: dict[str, torch.Tensor], *, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum to differentiate, plain NLL sum for logging) over the target tokens of a batch.

    The LM head runs only on positions that predict an assistant token: for a small model the
    vocabulary projection is a fifth of the compute, and most positions carry no loss."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
    hidden = lm.get_decoder()(**kwargs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    flat = targets[keep]
    loss = F.cross_entropy(logits, flat, reduction="sum", label_smoothing=label_smoothing)
    if label_smoothing:
        with torch.no_grad():
            nll = F.cross_entropy(logits, flat, reduction="sum")
    else:
        nll = loss.detach()
    return loss, nll


def classifier_loss_sums(model: Any, batch: dict[str, torch.Tensor], *, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    loss = F.cross_entropy(logits, batch["labels"], reduction="sum", label_smoothing=label_smoothing)
    nll = F.cross_entropy(logits.detach(), batch["labels"], reduction="sum") if label_smoothing else loss.detach()
    return loss, nll


def target_count(batch: dict[str, torch.Tensor], family: str) -> int:
    if family == "classifier":
        return int(batch["labels"].numel())
    return int((batch["labels"][:, 1:] != IGNORE).sum())


# ------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: folders are renamed into place only once fully written."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"step-\d{8}", p.name)]
    return max(done, key=lambda p: p.name, default=None)


def save_checkpoint(folder: Path, step: int, *, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any], acc: Any, keep: int) -> None:
    from safetensors.torch import save_model

    target = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    # every process keeps its own RNG stream (dropout differs per process)
    (tmp / f"rng-{acc.process_index}.json").write_text(json.dumps(_rng_state()), encoding="utf-8")
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, target)  # the checkpoint exists only once it is complete
        for old in sorted(p for p in folder.iterdir() if re.fullmatch(r"step-\d{8}", p.name))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def load_checkpoint(path: Path, *, model: Any, optimizer: Any, scheduler: Any, acc: Any) -> dict[str, Any]:
    from safetensors.torch import load_model

    load_model(model, str(path / "model.safetensors"), device=str(acc.device))
    opt = torch.load(path / "optimizer.pt", weights_only=True, map_location=acc.device)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng = path / f"rng-{acc.process_index}.json"
    if rng.exists():
        _set_rng_state(json.loads(rng.read_text(encoding="utf-8")))
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


# -------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_loss(model: Any, batches: list[dict[str, torch.Tensor]], *, family: str, device: Any, autocast: Any) -> float:
    model.eval()
    total, count = 0.0, 0
    loss_fn = causal_loss_sums if family == "causal_lm" else classifier_loss_sums
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            _, nll = loss_fn(model, batch, label_smoothing=0.0)
        total += float(nll)
        count += target_count(batch, family)
    model.train()
    return total / max(1, count)


# ------------------------------------------------------------------------------------ launch
def relaunch_command(num_processes: int, argv: list[str]) -> list[str] | None:
    """The `accelerate launch` command that re-runs this script on N processes, or None when this
    process is already one of them (or N == 1)."""
    if num_processes <= 1 or "LOCAL_RANK" in os.environ or "ACCELERATE_LAUNCHED" in os.environ:
        return None
    with socket.socket() as s:  # a free port: parallel builds must not share a rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # --multi_gpu selects accelerate's torchrun launcher on CPU too (`--cpu` would start one process and
    # expect mpirun); each process then runs Accelerator(cpu=True), which joins a gloo group.
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
        "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
        "--multi_gpu", *argv,
    ]


# ---------------------------------------------------------------------- the family, chosen once
Batch = dict[str, torch.Tensor]


@dataclass
class FamilyTraining:
    """What differs between the two families in `train` (model.family), built once by FAMILIES:
    the tokenized examples, the batches of an epoch, the loss, the val scores besides the loss, and
    what a finished model adds. The loop itself is the same for both."""

    train_ex: list[Any]
    train_stats: Any  # TokenizeStats: .as_metrics(prefix)
    val_ex: list[Any]
    val_stats: Any
    val_batches: list[Batch]
    batching: str  # what the start-of-training log line calls the batching
    batches_for: Callable[[int], list[Batch]]  # epoch -> its micro-batches, deterministic per (seed, epoch)
    loss_sums: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (model, batch, label_smoothing=) -> (loss, nll sum)
    labels: list[str] = field(default_factory=list)  # classifier intents (id order); [] for a causal LM

    @classmethod
    def build(cls, tp: TrainParams, tokenizer: Any, train_convs: list[Conversation], val_sample: list[Conversation],
              *, labels: list[str]) -> FamilyTraining:
        """Tokenize the train conversations and the val sample; the batches of each epoch."""
        raise NotImplementedError

    @staticmethod
    def label_names(train_convs: list[Conversation]) -> list[str] | None:
        """The classifier head's labels (None: no head); known before the model is loaded."""
        return None

    def val_scores(self, model: Any, acc: Any, val_loss: float, val_convs: list[Conversation]) -> dict[str, float]:
        """Val numbers besides the loss, keyed val/<name>; overridden per family."""
        raise NotImplementedError

    def finish(self, model: Any, acc: Any, metrics: dict[str, Any], tp: TrainParams) -> dict[str, Any]:
        """Manifest details a finished model adds (a classifier's calibration); may add to `metrics`."""
        return {}

    def responses(self, given: dict[str, dict[str, str]] | None, train_convs: list[Conversation],
                  metrics: dict[str, Any]) -> dict[str, dict[str, str]] | None:
        """The responses the folder carries: `given` for a causal LM (None: none)."""
        return given


@dataclass
class CausalLMTraining(FamilyTraining):
    """Chat-formatted conversations, loss on assistant tokens; val perplexity and answer BLEU."""

    tp: TrainParams | None = None
    tokenizer: Any = None

    @classmethod
    def build(cls, tp: TrainParams, tokenizer: Any, train_convs: list[Conversation], val_sample: list[Conversation],
              *, labels: list[str]) -> CausalLMTraining:
        pad_id = tokenizer.pad_token_id
        train_ex, train_stats = tokenize_conversations(train_convs, tokenizer, max_seq_len=tp.max_seq_len, overlong=tp.overlong)
        val_ex, val_stats = tokenize_conversations(val_sample, tokenizer, max_seq_len=tp.max_seq_len, overlong="truncate")
        rows = pack(train_ex, max_seq_len=tp.max_seq_len) if tp.batching == "pack" else None
        val_batches = [collate_packed(r, pad_id=pad_id) for r in _chunks(pack(val_ex, max_seq_len=tp.max_seq_len), tp.batch_size)]

        def batches_for(epoch: int) -> list[Batch]:
            return epoch_batches(train_ex, batching=tp.batching, batch_size=tp.batch_size, max_seq_len=tp.max_seq_len,
                                 seed=tp.seed, epoch=epoch, pad_id=pad_id, packed_rows=rows)

        return cls(train_ex, train_stats, val_ex, val_stats, val_batches, tp.batching, batches_for, causal_loss_sums,
                   tp=tp, tokenizer=tokenizer)

    def val_scores(self, model: Any, acc: Any, val_loss: float, val_convs: list[Conversation]) -> dict[str, float]:
        tp = self.tp
        assert tp is not None
        out = {"val/perplexity": math.exp(min(val_loss, 50.0))}
        if tp.bleu_samples:  # the one answer-quality path (chatforge.runtime.quality)
            scores = model_answer_scores(acc.unwrap_model(model), self.tokenizer, val_convs, samples_per_lang=tp.bleu_samples,
                                         max_new_tokens=tp.bleu_max_new_tokens, seed=tp.seed)
            out.update({f"val/{k}": v for k, v in scores.items()})
        return out


@dataclass
class ClassifierTraining(FamilyTraining):
    """Intent classification on an encoder; length-grouped batches; val accuracy; calibration and
    per-intent responses when done."""

    @classmethod
    def build(cls, tp: TrainParams, tokenizer: Any, train_convs: list[Conversation], val_sample: list[Conversation],
              *, labels: list[str]) -> ClassifierTraining:
        from chatforge.modeling.data import length_groups

        pad_id = tokenizer.pad_token_id
        train_ex, train_stats = clf.classifier_examples(train_convs, tokenizer, labels=labels, mode=tp.classifier_input,
                                                        max_seq_len=tp.max_seq_len)
        val_ex, val_stats = clf.classifier_examples(val_sample, tokenizer, labels=labels, mode=tp.classifier_input,
                                                    max_seq_len=tp.max_seq_len)
        val_batches = [clf.collate_classifier(b, pad_id=pad_id) for b in _chunks(sorted(val_ex, key=lambda e: len(e.input_ids)), tp.batch_size)]

        def batches_for(epoch: int) -> list[Batch]:
            groups = length_groups(train_ex, batch_size=tp.batch_size, seed=tp.seed * 1_000_003 + epoch)
            return [clf.collate_classifier(g, pad_id=pad_id) for g in groups]

        return cls(train_ex, train_stats, val_ex, val_stats, val_batches, "length_group", batches_for,
                   classifier_loss_sums, labels)

    @staticmethod
    def label_names(train_convs: list[Conversation]) -> list[str] | None:
        return clf.label_names(train_convs)

    def val_scores(self, model: Any, acc: Any, val_loss: float, val_convs: list[Conversation]) -> dict[str, float]:
        return {"val/accuracy": _accuracy(model, self.val_batches, acc)}

    def finish(self, model: Any, acc: Any, metrics: dict[str, Any], tp: TrainParams) -> dict[str, Any]:
        return _calibrate(model, self.val_batches, acc, tp.calibrate, metrics)

    def responses(self, given: dict[str, dict[str, str]] | None, train_convs: list[Conversation],
                  metrics: dict[str, Any]) -> dict[str, dict[str, str]] | None:
        """train.responses_path's, else learned from the train split; intents without one are counted
        (metrics intents_without_response) and logged: serving answers them with its fallback."""
        responses = given if given is not None else clf.learn_responses(train_convs)
        missing = [name for name in self.labels if name not in responses]
        metrics["intents_without_response"] = len(missing)
        if missing:
            log.warning("no response for intents %s: serving answers them with its fallback", missing)
        return responses


# model.family -> how its data, loss and val scores are built (train() looks it up once)
FAMILIES: dict[str, type[FamilyTraining]] = {"causal_lm": CausalLMTraining, "classifier": ClassifierTraining}


# ------------------------------------------------------------------------------------- train
def train(
    *,
    model_params: ModelParams,
    train_params: TrainParams,
    base_dir: Path,
    train_turns: pl.DataFrame,
    val_turns: pl.DataFrame,
    checkpoint_dir: Path | None = None,
    live_dir: Path | None = None,
    responses: dict[str, dict[str, str]] | None = None,
) -> TrainOutcome:
    """Fine-tune the base in `base_dir`; checkpoints go to `checkpoint_dir` (keyed by the caller's
    fingerprint of data + params) and dvclive curves to `live_dir`."""
    from accelerate.utils import set_seed

    from chatforge.runtime.device import accelerator

    mp, tp, family = model_params, train_params, model_params.family
    check_inputs(mp, tp, base_dir=base_dir, train_turns=train_turns, val_turns=val_turns)
    acc = accelerator(tp.precision, key="train.precision")  # CUDA when present, else CPU (modeling.device)
    world, rank = acc.num_processes, acc.process_index
    set_seed(tp.seed)
    torch.use_deterministic_algorithms(not torch.cuda.is_available(), warn_only=True)

    # --- data: the family is chosen once; everything below is the same loop for both
    train_convs, val_convs = conversations(train_turns), conversations(val_turns)
    chosen = FAMILIES[family]
    labels = chosen.label_names(train_convs)
    model, tokenizer = load_for_training(mp, tp, base_dir, labels=labels)
    fam = chosen.build(tp, tokenizer, train_convs, _sample(val_convs, tp.eval_max_conversations, tp.seed),
                       labels=labels or [])
    train_ex, train_stats, val_batches, batches_for = fam.train_ex, fam.train_stats, fam.val_batches, fam.batches_for
    if not train_ex:
        raise TrainError(f"no train example is left after tokenization ({train_stats.as_metrics('train')}); check train.overlong / max_seq_len.")
    if not fam.val_ex:
        raise TrainError(f"no val example is left after tokenization ({fam.val_stats.as_metrics('val')}).")

    per_step = tp.grad_accum_steps * world
    steps_per_epoch = len(batches_for(0)) // per_step
    if steps_per_epoch == 0:
        raise TrainError(
            f"train.batch_size x grad_accum_steps x num_processes needs {per_step} micro-batches per step but the "
            f"data makes {len(batches_for(0))} (after packing); lower train.batch_size or grad_accum_steps."
        )
    total_steps = tp.max_steps or tp.epochs * steps_per_epoch

    # --- model, freezing, optimizer
    if tp.dropout is not None or tp.attention_dropout is not None:
        log.info("dropout overrides: %s", dropout_overrides(model.config, hidden=tp.dropout, attention=tp.attention_dropout))
    if tp.lora.enabled:
        model = _with_lora(model, tp, family)
    if tp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if tp.lora.enabled:
            model.enable_input_require_grads()
    stack = find_layer_stack(model) if tp.freeze != "none" else None
    model.to(acc.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    scheduler = cosine_with_floor(optimizer, lr=tp.lr, lr_min=tp.lr_min, warmup_steps=tp.warmup_steps, total_steps=total_steps)
    optimizer = acc.prepare_optimizer(optimizer, device_placement=False)

    # --- resume
    state: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "history": [], "best_val_loss": None,
                             "bad_evals": 0, "gap_flags": 0, "unfreeze_events": [], "resumed_from": None, "base_eval": {}}
    ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, acc=acc)
        state["resumed_from"] = state["step"]
        log.info("resuming from step %d (%s)", state["step"], ckpt)
    live = _open_live(live_dir, state["history"]) if live_dir and acc.is_main_process else None

    def evaluate() -> dict[str, float]:
        val_loss = evaluate_loss(model, val_batches, family=family, device=acc.device, autocast=acc.autocast)
        return {"val/loss": val_loss, **fam.val_scores(model, acc, val_loss, val_convs)}

    if tp.eval_base and state["step"] == 0:
        # the untouched base on the same val sample: what the fine-tune has to beat
        state["base_eval"] = evaluate()
        log.info("base before training: %s", ", ".join(f"{k}={v:.4g}" for k, v in state["base_eval"].items()))
    frozen_now = -1
    window_nll, window_tokens = 0.0, 0
    stopped_early = False
    step_seconds, trained_tokens = 0.0, 0  # this run's optimizer-step time and non-padding tokens
    log.info("training %s: %d steps (%d per epoch), %d train examples, %d processes, %s batching",
             family, total_steps, steps_per_epoch, len(train_ex), world, fam.batching)

    def step_groups() -> Iterator[tuple[int, int, list[dict[str, torch.Tensor]]]]:
        epoch, pos = state["epoch"], state["position"]
        while True:
            batches = batches_for(epoch)
            for g in range(pos, steps_per_epoch):
                yield epoch, g, batches[g * per_step : (g + 1) * per_step]
            epoch, pos = epoch + 1, 0

    for step, (epoch, g, group) in zip(
        progress(range(state["step"], total_steps), total=total_steps - state["step"], desc="train"), step_groups(), strict=False
    ):
        # freezing is a function of (step, epoch): recomputed identically after a resume
        if stack is not None:
            frozen = frozen_layer_count(
                n_layers=len(stack.layers), mode=tp.freeze, freeze_layers=tp.freeze_layers, unfreeze_layers=tp.unfreeze_layers,
                unfreeze_every_steps=tp.unfreeze_every_steps, unfreeze_every_epochs=tp.unfreeze_every_epochs, step=step, epoch=epoch,
            )
            if frozen != frozen_now:
                trainable = apply_freezing(model, stack, frozen_layers=frozen,
                                           freeze_embeddings=tp.freeze == "all_but_head" or tp.freeze_embeddings)
                if frozen_now >= 0:
                    log.info("unfreezing at step %d (epoch %d): %d of %d layers still frozen", step, epoch, frozen, len(stack.layers))
                    state["unfreeze_events"].append({"step": step, "epoch": epoch, "frozen_layers": frozen})
                else:
                    log.info("freezing: %d of %d layers frozen, %d trainable parameters", frozen, len(stack.layers), trainable)
                frozen_now = frozen

        started = time.perf_counter()
        n_targets = sum(target_count(b, family) for b in group)  # every process sees the whole step
        trained_tokens += sum(int(b["num_tokens"]) for b in group)
        nll_sum = torch.zeros((), device=acc.device)
        for batch in group[rank::world]:
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                loss, nll = fam.loss_sums(model, batch, label_smoothing=tp.label_smoothing)
            acc.backward(loss * (world / max(1, n_targets)))
            nll_sum += nll.float()
        if world > 1:
            _average_gradients(model, world)
            torch.distributed.all_reduce(nll_sum)
        if tp.max_grad_norm:
            acc.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], tp.max_grad_norm)
        lr_used = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds += time.perf_counter() - started
        done = step + 1
        train_loss = float(nll_sum) / max(1, n_targets)
        window_nll += float(nll_sum)
        window_tokens += n_targets
        record: dict[str, float] = {"step": done, "epoch": epoch, "train/loss": train_loss, "train/lr": lr_used}

        if done % tp.eval_every_steps == 0 or done == total_steps:
            record.update(evaluate())
            val_loss = record["val/loss"]
            window_loss = window_nll / max(1, window_tokens)
            window_nll, window_tokens = 0.0, 0
            gap = val_loss - window_loss
            record["val/gap"] = gap
            if gap > tp.max_gap:
                state["gap_flags"] += 1
                log.warning("step %d: val loss %.4f exceeds train loss %.4f by %.4f > train.max_gap %.2f (overfitting?)",
                            done, val_loss, window_loss, gap, tp.max_gap)
            best = state["best_val_loss"]
            if best is None or val_loss < best - tp.early_stopping_min_delta:
                state["best_val_loss"], state["bad_evals"] = val_loss, 0
            else:
                state["bad_evals"] += 1
            log.info("step %d: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k.startswith("val/")))
            if tp.early_stopping_patience and state["bad_evals"] >= tp.early_stopping_patience:
                log.info("early stopping at step %d: no val-loss improvement in %d evaluations", done, state["bad_evals"])
                stopped_early = True
        state["history"].append(record)
        if live is not None:
            _log_live(live, record)
        state.update(step=done, epoch=epoch if g + 1 < steps_per_epoch else epoch + 1, position=(g + 1) % steps_per_epoch)
        if stopped_early:
            break
        if checkpoint_dir and done % tp.checkpoint_every_steps == 0 and done < total_steps:
            save_checkpoint(checkpoint_dir, done, model=model, optimizer=optimizer, scheduler=scheduler, state=state, acc=acc, keep=tp.keep_checkpoints)

    # --- finish
    if live is not None:
        live.end()
    model = acc.unwrap_model(model)
    if tp.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    if tp.lora.enabled:
        model = model.merge_and_unload()  # the teacher is an ordinary model folder
    model.eval()
    evals = [r for r in state["history"] if "val/loss" in r]
    last = evals[-1] if evals else {}
    metrics: dict[str, Any] = {
        "steps": state["step"], "total_steps_planned": total_steps, "steps_per_epoch": steps_per_epoch,
        "stopped_early": stopped_early, "resumed_from_step": state["resumed_from"] or 0,
        "gap_flags": state["gap_flags"], "unfreeze_events": len(state["unfreeze_events"]),
        "best_val_loss": state["best_val_loss"], "num_processes": world, "process_index": rank,
        "train_loss": state["history"][-1]["train/loss"] if state["history"] else None,
        **{k.replace("/", "_"): v for k, v in last.items() if k.startswith("val/")},
        **{"base_" + k.replace("/", "_"): v for k, v in state["base_eval"].items()},
        **train_stats.as_metrics("train"), **fam.val_stats.as_metrics("val"),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    details: dict[str, Any] = {"steps": state["step"], "unfreeze_events": state["unfreeze_events"],
                               **fam.finish(model, acc, metrics, tp)}
    responses = fam.responses(responses, train_convs, metrics)
    for p in model.parameters():
        p.requires_grad_(True)
    timing = {"train_seconds": step_seconds, "trained_tokens": trained_tokens,
              "tokens_per_second": trained_tokens / step_seconds if step_seconds else 0.0}
    log.info("%d optimizer steps in %.1f s, %.1f trained tokens/s", state["step"] - (state["resumed_from"] or 0),
             step_seconds, timing["tokens_per_second"])
    return TrainOutcome(model, tokenizer, metrics, state["history"], details, responses, timing)


def _sample(convs: list[Conversation], n: int | None, seed: int) -> list[Conversation]:
    if n is None or n >= len(convs):
        return convs
    picked = list(convs)
    random.Random(seed).shuffle(picked)
    return sorted(picked[:n], key=lambda c: c.conversation_id)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _average_gradients(model: Any, world: int) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def _val_logits(model: Any, batches: list[dict[str, torch.Tensor]], acc: Any) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, labels = [], []
    for b in batches:
        with acc.autocast():
            logits.append(model(input_ids=b["input_ids"].to(acc.device), attention_mask=b["attention_mask"].to(acc.device)).logits.float().cpu())
        labels.append(b["labels"])
    model.train()
    return torch.cat(logits), torch.cat(labels)


def _accuracy(model: Any, batches: list[dict[str, torch.Tensor]], acc: Any) -> float:
    logits, labels = _val_logits(model, batches, acc)
    return float((logits.argmax(-1) == labels).float().mean())


def _calibrate(model: Any, batches: list[dict[str, torch.Tensor]], acc: Any, enabled: bool, metrics: dict[str, Any]) -> dict[str, Any]:
    logits, labels = _val_logits(model, batches, acc)
    temperature = clf.fit_temperature(logits, labels) if enabled else 1.0
    metrics["ece_before"] = clf.expected_calibration_error(logits.softmax(-1), labels)
    metrics["ece_after"] = clf.expected_calibration_error((logits / temperature).softmax(-1), labels)
    metrics["calibration_temperature"] = temperature
    metrics["val_accuracy"] = float((logits.argmax(-1) == labels).float().mean())
    return {"calibration_temperature": temperature, "ece_before": metrics["ece_before"], "ece_after": metrics["ece_after"]}


def _with_lora(model: Any, tp: TrainParams, family: str) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=tp.lora.r, lora_alpha=tp.lora.alpha, lora_dropout=tp.lora.dropout, target_modules=tp.lora.target_modules,
        task_type=TaskType.CAUSAL_LM if family == "causal_lm" else TaskType.SEQ_CLS,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise TrainError(f"train.lora: {exc} Set train.lora.target_modules to this model's linear layer names.") from None


def _open_live(live_dir: Path, history: list[dict[str, float]]) -> Any:
    """A fresh dvclive log; after a resume the steps before the checkpoint are replayed into it, so the
    curves are whole even though dvc removed the killed run's outputs."""
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False, report=None)
    for record in history:
        _log_live(live, record)
    return live


def _log_live(live: Any, record: dict[str, float]) -> None:
    live.step = int(record["step"])
    for key, value in record.items():
        if key not in ("step", "epoch"):
            live.log_metric(key, value)
    live.next_step()


def index_exchanges(index_data: Path | None, *, family: str) -> list[Conversation] | None:
    """The exchanges retrieval in the loop answers from, for a causal LM with `index_data` (the
    train split parquet): its original conversations, carried in the teacher folder
    (`retrieval.jsonl`, written by runtime.folder.publish_folder); None otherwise."""
    if index_data is None or family != "causal_lm":
        return None
    exchanges = conversations(pl.read_parquet(index_data).filter(pl.col("method") == "original"))
    log.info("retrieval in the loop: %d train conversations", len(exchanges))
    return exchanges


def clear_checkpoints(folder: Path) -> None:
    """Drop a run's checkpoints once its model is published (they would only resume a finished run)."""
    shutil.rmtree(folder, ignore_errors=True)


def fingerprint(*, data_files: list[Path], base_dir: Path, sections: list[Any]) -> tuple[str, str, str]:
    """(data sha256, params sha256, run fingerprint): checkpoints resume only into the same run."""
    import hashlib

    from chatforge.io import sha256_file, sha256_tree
    from chatforge.runtime.folder import sections_sha256

    data_sha = hashlib.sha256("\n".join(sha256_file(p) for p in data_files).encode()).hexdigest()
    params_sha = sections_sha256(*sections)
    run = hashlib.sha256(f"{data_sha}\n{params_sha}\n{sha256_tree(base_dir)}".encode()).hexdigest()[:16]
    return data_sha, params_sha, run

"""Learning from thumbs-up and thumbs-down: KTO on the exported feedback (the `kto` stage, issue 23).

Rows. `chatforge feedback export-kto` writes one JSON object per line (TRL's unpaired-preference
format): `prompt` (the conversation up to the answer: a list of {"role", "content"} messages ending
with the user's, or a string: one user message), `completion` (a list of one {"role": "assistant",
"content"} message, or a string), `label` (true: desirable, false: undesirable), and more keys
(`source`, `feedback_id`, ...) that are kept for the record. `read_preferences` reads a file or every
`*.jsonl` of a folder (sorted; `*.rejects.jsonl`, the exporter's own rejects, are not rows); a row it
cannot use becomes a reject with a reason from REJECT_REASONS and where it was (file:line), never a
traceback, and a file none of whose rows is usable is an error (PreferenceError).

Scoring. Prompt + completion are rendered with the model's chat template and tokenised by
chatforge.runtime.conversation.tokenize_chat, the path the train stage's loss uses, and only the
completion's labels are kept (`tokenize_pair`): log pi(y|x) is the sum of the log-probabilities of
exactly the tokens training teaches for an assistant answer (its content and end-of-turn token).

Training (`train_kto`). The reference is the input model, frozen: its log-probabilities of every
completion, and of every mismatched completion (the KL pairs), are computed once up front, before
the first update, while policy and reference are still the same weights (then only the policy is
kept in memory). Batches are fixed once (a seeded shuffle into `batch_size` examples; the KL pairs
of a batch are chatforge.modeling.kto.mismatched_completions of it, as TRL pairs them), and visited
in a seeded order, epoch after epoch. Each step: the policy's log-probabilities of the KL pairs
without gradient (TRL computes them under no_grad too), z0 = kl_reference_point, the policy's
log-probabilities of the batch's completions, chatforge.modeling.kto.kto_loss, AdamW (no weight
decay) with gradient clipping at 1.0, lr cosine from kto.lr to kto.lr/100 (modeling.schedule, no
warmup: the model starts trained). Source: Ethayarajh et al. 2024 (https://arxiv.org/abs/2402.01306);
TRL's KTOTrainer (trl/trainer/kto_trainer.py) for the pairing and the loss.

Off. `skip_reason` says why a run trains nothing (no usable rows, fewer than kto.min_rows, kto.steps 0,
a classifier); the stage then publishes the input folder unchanged (`publish_unchanged`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.io import progress
from chatforge.modeling.kto import KTOError, check_weights, default_weights, kl_reference_point, kto_loss, mismatched_completions
from chatforge.params import KTOParams
from chatforge.runtime.conversation import IGNORE, Conversation, Example, tokenize_chat

log = logging.getLogger("chatforge.kto")

# why a row is not an example: fixed names, counted in reports/kto.json as rejected_<reason>
REJECT_REASONS = ("not_utf8", "malformed_json", "not_an_object", "missing_field", "bad_label", "bad_prompt",
                  "bad_completion", "empty_completion")
REJECTS_SHOWN = 20  # rejects listed one by one in the metrics (all are counted)
ROLES = ("system", "user", "assistant")
_SHOWN = 60  # characters of a value quoted in a reject or error (messages never echo unbounded input)


class PreferenceError(ValueError):
    """The preference rows cannot be used; the message names the file, what is wrong and the fix."""


@dataclass(frozen=True)
class PreferenceExample:
    """One usable row: the prompt messages, the completion's text and its label."""

    prompt: list[dict[str, str]]
    completion: str
    desirable: bool
    location: str  # file:line
    source: str | None = None  # thumbs_up | thumbs_down | correction (the exporter's), when the row says


@dataclass
class Preferences:
    """What `read_preferences` read: the usable examples in file then line order, and the rejects
    ({"location": file:line, "reason": one of REJECT_REASONS, "detail": what to fix})."""

    examples: list[PreferenceExample] = field(default_factory=list)
    rejects: list[dict[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rows_read: int = 0  # non-blank lines

    @property
    def desirable(self) -> int:
        return sum(e.desirable for e in self.examples)

    @property
    def undesirable(self) -> int:
        return len(self.examples) - self.desirable

    def metrics(self) -> dict[str, Any]:
        """Counts for reports/kto.json: files, rows read / used / rejected, rejected_<reason> for every
        reason (0 included, so `dvc metrics diff` lines up), desirable / undesirable, the first
        REJECTS_SHOWN rejects."""
        reasons = Counter(r["reason"] for r in self.rejects)
        return {"files": len(self.files), "rows_read": self.rows_read, "rows": len(self.examples),
                "rejected": len(self.rejects), **{f"rejected_{r}": reasons.get(r, 0) for r in REJECT_REASONS},
                "desirable": self.desirable, "undesirable": self.undesirable, "rejects": self.rejects[:REJECTS_SHOWN]}


# ------------------------------------------------------------------------------------- reading
def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _messages(value: Any, what: str) -> tuple[list[dict[str, str]] | None, str]:
    """The messages of a prompt / completion value, or (None, why not)."""
    if isinstance(value, str):
        return [{"role": "user" if what == "prompt" else "assistant", "content": value}], ""
    if not isinstance(value, list) or not value:
        kind = "an empty list" if value == [] else type(value).__name__
        return None, f"{what} is {kind}: write a list of {{\"role\", \"content\"}} messages or a string"
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            got = sorted(m)[:6] if isinstance(m, dict) else type(m).__name__
            return None, (f"{what} message {i} is not {{\"role\": {'|'.join(ROLES)}, \"content\": text}} (got {_shown(got)}); "
                          "content must be a plain string")
        out.append({"role": m["role"], "content": m["content"]})
    return out, ""


def parse_row(line: str, location: str) -> PreferenceExample | dict[str, str]:
    """One JSONL line as an example, or a reject {"location", "reason", "detail"} (reasons: REJECT_REASONS)."""

    def reject(reason: str, detail: str) -> dict[str, str]:
        return {"location": location, "reason": reason, "detail": detail}

    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return reject("malformed_json", f"not JSON ({exc.msg} at column {exc.colno}): one JSON object per line")
    if not isinstance(row, dict):
        return reject("not_an_object", f"a JSON {type(row).__name__}, not an object with prompt, completion and label")
    absent = [k for k in ("prompt", "completion", "label") if k not in row]
    if absent:
        return reject("missing_field", f"no {', '.join(absent)} (has {_shown(sorted(row)[:8])}): each row needs "
                                       "prompt, completion and label")
    if not isinstance(row["label"], bool):
        return reject("bad_label", f"label is {_shown(row['label'])}: write true (desirable) or false (undesirable)")
    prompt, why = _messages(row["prompt"], "prompt")
    if prompt is None:
        return reject("bad_prompt", why)
    if prompt[-1]["role"] != "user" or not any(m["content"].strip() for m in prompt if m["role"] == "user"):
        return reject("bad_prompt", f"the prompt ends with a {prompt[-1]['role']!r} message or has no user text: it must "
                                    "end with the user message the completion answers")
    completion, why = _messages(row["completion"], "completion")
    if completion is None:
        return reject("bad_completion", why)
    if len(completion) != 1 or completion[0]["role"] != "assistant":
        return reject("bad_completion", f"completion has {len(completion)} message(s), roles "
                                        f"{_shown([m['role'] for m in completion][:4])}: write one assistant message")
    if not completion[0]["content"].strip():
        return reject("empty_completion", "the completion is empty: nothing to learn from; drop the row")
    source = row.get("source")
    return PreferenceExample(prompt, completion[0]["content"], row["label"], location,
                             source if isinstance(source, str) else None)


def preference_files(path: Path) -> list[Path]:
    """`path` itself when it is a file, else its `*.jsonl` files, sorted, without `*.rejects.jsonl`.
    Raises PreferenceError when `path` does not exist."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PreferenceError(f"{_shown(str(path))} does not exist: create the folder (an empty one means no feedback) "
                              "or write rows there with `chatforge feedback export-kto`")
    return sorted(p for p in path.glob("*.jsonl") if p.is_file() and not p.name.endswith(".rejects.jsonl"))


def read_preferences(path: Path) -> Preferences:
    """Every row of the file `path` or of the `*.jsonl` files in the folder `path` (`preference_files`).

    Blank lines are skipped; every other line is a usable example or a counted reject (`parse_row`).
    Raises PreferenceError when the path does not exist, or when a file has rows and none is usable
    (naming the file, the reasons and the first reject's line): a file of only bad rows is a wrong
    file, not feedback.
    """
    out = Preferences()
    for file in preference_files(path):
        out.files.append(str(file))
        examples, rejects = [], []
        for number, raw in enumerate(file.read_bytes().splitlines(), 1):
            location = f"{file}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                rejects.append({"location": location, "reason": "not_utf8", "detail": "the line is not UTF-8 text"})
                continue
            if not line:
                continue
            parsed = parse_row(line, location)
            (examples if isinstance(parsed, PreferenceExample) else rejects).append(parsed)
        if rejects and not examples:
            counts = ", ".join(f"{r} {n}" for r, n in sorted(Counter(x["reason"] for x in rejects).items()))
            first = rejects[0]
            raise PreferenceError(
                f"{_shown(str(file))}: none of its {len(rejects)} rows is a usable KTO example ({counts}; first at "
                f"{first['location'].rsplit(':', 1)[-1]}: {first['detail']}). Fix or remove the file; "
                "`chatforge feedback export-kto` writes rows {prompt, completion, label}.")
        out.examples += examples
        out.rejects += rejects
        out.rows_read += len(examples) + len(rejects)
    return out


def skip_reason(preferences: Preferences, params: KTOParams, *, family: str) -> str | None:
    """Why KTO trains nothing this run (the stage publishes the input unchanged), or None."""
    if family != "causal_lm":
        return f"the model is a {family}: KTO scores a chat model's answers (model.family causal_lm)"
    if params.steps == 0:
        return "kto.steps is 0"
    n = len(preferences.examples)
    if n == 0:
        return ("no feedback: no usable row in the preferences folder (`chatforge feedback export-kto` writes "
                "thumbs-up / thumbs-down there)")
    if n < params.min_rows:
        return f"{n} usable rows, fewer than kto.min_rows = {params.min_rows}"
    return None


def choose_weights(n_desirable: int, n_undesirable: int, params: KTOParams) -> dict[str, Any]:
    """The loss weights used and how they stand against TRL's imbalance rule: {desirable_weight,
    undesirable_weight, weights_from: params | imbalance_rule, weight_ratio (None with one kind only),
    weights_in_band, weights_note}. Weights from params outside the [1, 4/3] band are used as given,
    with a warning (TRL warns too), and the note says which weights would pass."""
    if params.desirable_weight is None or params.undesirable_weight is None:
        w_d, w_u = default_weights(n_desirable, n_undesirable)
        source = "imbalance_rule"
    else:
        w_d, w_u = params.desirable_weight, params.undesirable_weight
        source = "params"
    note = ""
    try:
        check_weights(n_desirable, n_undesirable, desirable_weight=w_d, undesirable_weight=w_u)
    except KTOError as exc:
        note = str(exc)
        log.warning("%s (kto.desirable_weight / kto.undesirable_weight; null on both applies the rule)", note)
    both = n_desirable > 0 and n_undesirable > 0
    return {"desirable_weight": w_d, "undesirable_weight": w_u, "weights_from": source,
            "weight_ratio": w_d * n_desirable / (w_u * n_undesirable) if both else None,
            "weights_in_band": not note, "weights_note": note}


# ------------------------------------------------------------------------------------- scoring
def tokenize_pair(tokenizer: Any, prompt: list[dict[str, str]], completion: str, *, max_seq_len: int) -> tuple[Example, bool]:
    """(example, truncated): prompt + completion rendered and tokenised as training does
    (runtime.conversation.tokenize_chat), labels kept on the completion's tokens only.

    tokenize_chat labels each assistant message's content tokens and the end-of-turn token right after
    them, one run per message, and the next message's role header (never labelled) separates runs:
    the last run is the completion's. Above max_seq_len the prompt loses its start first; a completion
    longer than that alone loses its end. Raises PreferenceError when the template leaves the
    completion no token (a chat template that drops assistant text)."""
    ex = tokenize_chat(tokenizer, Conversation("", "", None, [*prompt, {"role": "assistant", "content": completion}]))
    labelled = [i for i, x in enumerate(ex.labels) if x != IGNORE]
    if not labelled:
        raise PreferenceError("the chat template leaves the completion no token to score: use a model whose chat "
                              "template writes assistant messages (tokenizer_config.json chat_template)")
    end = labelled[-1] + 1
    start = end - 1
    while start > 0 and ex.labels[start - 1] != IGNORE:
        start -= 1
    ids = ex.input_ids[:end]  # nothing after the completion's end token is scored
    labels = [IGNORE] * start + ex.labels[start:end]
    if len(ids) <= max_seq_len:
        return Example(ids, labels), False
    first = max(0, min(len(ids) - max_seq_len, start - 1))  # keep at least one token before the completion
    return Example(ids[first : first + max_seq_len], labels[first : first + max_seq_len]), True


def completion_logps(model: Any, batch: dict[str, Any]) -> Any:
    """Shape (batch,): per row, the summed log-probability (nats) of its labelled tokens given the
    tokens before them (TRL's `_get_batch_logps` with average_log_prob False). The LM head runs only
    where a label is predicted, as in the train stage's loss."""
    import torch
    import torch.nn.functional as F

    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_logps = -F.cross_entropy(logits, targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    return torch.zeros(targets.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)


@dataclass
class _Batch:
    target: dict[str, Any]  # prompt_i + completion_i, padded
    kl: dict[str, Any]  # prompt_i + completion_{i-1} (mismatched_completions)
    desirable: Any  # bool tensor (batch,)
    ref: Any = None  # reference log-probs of the completions, (batch,)
    ref_kl: Any = None  # reference log-probs of the mismatched completions, (batch,)


def make_batches(examples: Sequence[PreferenceExample], tokenizer: Any, *, batch_size: int, max_seq_len: int,
                 seed: int) -> tuple[list[_Batch], int]:
    """(fixed batches, rows truncated): a seeded shuffle cut into `batch_size` examples; a last batch
    of one joins the one before (the KL pairs need two)."""
    import torch

    from chatforge.modeling.data import collate_padded

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        last = groups.pop()
        groups[-1] = groups[-1] + last
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    truncated = 0
    batches = []
    for group in groups:
        picked = [examples[i] for i in group]
        pairs = list(zip([e.prompt for e in picked], [e.completion for e in picked], strict=True))
        kl_pairs = list(zip([e.prompt for e in picked], mismatched_completions([e.completion for e in picked]), strict=True))
        target = [tokenize_pair(tokenizer, p, c, max_seq_len=max_seq_len) for p, c in pairs]
        kl = [tokenize_pair(tokenizer, p, c, max_seq_len=max_seq_len)[0] for p, c in kl_pairs]
        truncated += sum(cut for _, cut in target)
        batches.append(_Batch(collate_padded([ex for ex, _ in target], pad_id=pad), collate_padded(kl, pad_id=pad),
                              torch.tensor([e.desirable for e in picked], dtype=torch.bool)))
    return batches, truncated


# ------------------------------------------------------------------------------------- training
@dataclass
class KTOOutcome:
    """What `train_kto` returns: the trained policy (eval mode) and its tokenizer, the metrics
    (reports/kto.json, without the row counts of `Preferences.metrics`), and the loss of every step."""

    model: Any
    tokenizer: Any
    metrics: dict[str, Any]
    losses: list[float] = field(default_factory=list)


def _logps_all(model: Any, batches: list[_Batch], key: str, device: Any) -> list[Any]:
    import torch

    from chatforge.runtime.device import to_device

    with torch.no_grad():
        return [completion_logps(model, to_device(getattr(b, key), device)) for b in batches]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _margins(policy: list[Any], reference: list[Any], batches: list[_Batch], beta: float) -> dict[str, float | None]:
    """Mean summed log-prob of desirable minus undesirable completions (logp_margin), the same of the
    implied rewards beta * (policy - reference) (reward_margin), and each kind's mean change."""
    d_pol, u_pol, d_diff, u_diff = [], [], [], []
    for pol, ref, b in zip(policy, reference, batches, strict=True):
        for p, r, good in zip(pol.tolist(), ref.tolist(), b.desirable.tolist(), strict=True):
            (d_pol if good else u_pol).append(p)
            (d_diff if good else u_diff).append(p - r)
    both = bool(d_pol) and bool(u_pol)
    return {
        "logp_margin": _mean(d_pol) - _mean(u_pol) if both else None,  # type: ignore[operator]
        "reward_margin": beta * (_mean(d_diff) - _mean(u_diff)) if both else None,  # type: ignore[operator]
        "desirable_logp_change": _mean(d_diff), "undesirable_logp_change": _mean(u_diff),
    }


def train_kto(model_dir: Path, examples: Sequence[PreferenceExample], *, params: KTOParams) -> KTOOutcome:
    """KTO on `examples` from the causal LM folder `model_dir`, which is also the frozen reference.

    Returns KTOOutcome; metrics: desirable_weight, undesirable_weight, weights_from, weight_ratio,
    weights_in_band, weights_note (`choose_weights`), beta, lr, steps, batch_size, batches,
    truncated_rows, loss_first / loss_last (and their 10-step means), kl_first / kl_last (z0 of the
    first and last step, nats), kl_after (z0 over every KL pair after training), logp_margin_before /
    _after (mean summed log-prob, nats, desirable minus undesirable completions, under the reference
    then the trained policy), reward_margin_before (0: the policy starts as the reference) / _after
    (beta x nats), desirable_logp_change / undesirable_logp_change (policy - reference, nats).
    Raises PreferenceError / KTOError for examples or settings that cannot train (fewer than two
    examples, a template that hides the completion); ModelFolderError for a folder that is not a model.
    """
    import torch

    from chatforge.modeling.schedule import cosine_with_floor
    from chatforge.runtime.device import accelerator, to_device
    from chatforge.runtime.folder import load_torch

    if len(examples) < 2:
        raise PreferenceError(f"KTO needs at least 2 examples (got {len(examples)}): export more feedback")
    n_d = sum(e.desirable for e in examples)
    weights = choose_weights(n_d, len(examples) - n_d, params)
    policy, tokenizer, family = load_torch(model_dir, key="kto (input model folder)")
    if family != "causal_lm":
        raise PreferenceError(f"{model_dir} is a {family}: KTO trains a causal LM (model.family causal_lm)")
    batches, truncated = make_batches(examples, tokenizer, batch_size=params.batch_size,
                                      max_seq_len=params.max_seq_len, seed=params.seed)
    acc = accelerator()
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    policy.to(acc.device)
    # the frozen reference is the input model: its numbers are all KTO needs of it, so they are taken
    # now, before the first update, instead of keeping a second copy of the weights in memory
    ref_logps = _logps_all(policy, batches, "target", acc.device)
    ref_kl = _logps_all(policy, batches, "kl", acc.device)
    for b, r, k in zip(batches, ref_logps, ref_kl, strict=True):
        b.ref, b.ref_kl = r, k

    optimizer = torch.optim.AdamW(policy.parameters(), lr=params.lr, weight_decay=0.0)
    scheduler = cosine_with_floor(optimizer, lr=params.lr, lr_min=params.lr / 100, warmup_steps=0, total_steps=params.steps)
    optimizer = acc.prepare_optimizer(optimizer, device_placement=False)
    policy.train()
    losses: list[float] = []
    kls: list[float] = []
    order: list[int] = []
    for _ in progress(range(params.steps), total=params.steps, desc="kto"):
        if not order:
            order = torch.randperm(len(batches), generator=generator).tolist()
        b = batches[order.pop()]
        target, kl_batch = to_device(b.target, acc.device), to_device(b.kl, acc.device)
        with acc.autocast():
            with torch.no_grad():
                z0 = kl_reference_point(completion_logps(policy, kl_batch), b.ref_kl)
            out = kto_loss(completion_logps(policy, target), b.ref, b.desirable.to(acc.device), kl=z0, beta=params.beta,
                           desirable_weight=weights["desirable_weight"], undesirable_weight=weights["undesirable_weight"])
        optimizer.zero_grad(set_to_none=True)
        acc.backward(out.loss)
        acc.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(out.loss.detach()))
        kls.append(float(out.kl))
    policy.eval()

    after = _logps_all(policy, batches, "target", acc.device)
    after_kl = _logps_all(policy, batches, "kl", acc.device)
    before_m, after_m = _margins(ref_logps, ref_logps, batches, params.beta), _margins(after, ref_logps, batches, params.beta)
    kl_after = float(kl_reference_point(torch.cat(after_kl), torch.cat(ref_kl))) if batches else 0.0
    metrics: dict[str, Any] = {
        **weights, "beta": params.beta, "lr": params.lr, "steps": len(losses), "batch_size": params.batch_size,
        "batches": len(batches), "truncated_rows": truncated,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "loss_first_10_mean": _mean(losses[:10]), "loss_last_10_mean": _mean(losses[-10:]),
        "kl_first": kls[0] if kls else None, "kl_last": kls[-1] if kls else None, "kl_after": kl_after,
        "logp_margin_before": before_m["logp_margin"], "logp_margin_after": after_m["logp_margin"],
        "reward_margin_before": before_m["reward_margin"], "reward_margin_after": after_m["reward_margin"],
        "desirable_logp_change": after_m["desirable_logp_change"],
        "undesirable_logp_change": after_m["undesirable_logp_change"],
    }
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise KTOError(f"KTO diverged: {k} is {v}; lower kto.lr or raise kto.beta")
    return KTOOutcome(policy, tokenizer, metrics, losses)


# ------------------------------------------------------------------------------------- publishing
def publish_unchanged(source_dir: Path, out_dir: Path, *, variant: str, details: dict[str, Any]) -> None:
    """Publish the model folder `source_dir` as `out_dir` unchanged: every file copied byte for byte
    (weights, tokenizer, responses.json, retrieval.jsonl ...) and its manifest re-written by
    runtime.folder.derived_manifest (variant, parent, `details` merged in). Atomic (io.atomic_path).
    A copy, not a torch load and save: the output's weights are the input's bytes. Raises
    ModelFolderError when `source_dir` has no valid manifest."""
    from chatforge.io import atomic_path
    from chatforge.runtime.folder import MANIFEST_NAME, derived_manifest, write_manifest

    manifest = derived_manifest(source_dir, variant=variant, details=details)
    with atomic_path(out_dir) as tmp:
        shutil.copytree(source_dir, tmp, ignore=shutil.ignore_patterns(MANIFEST_NAME))
        write_manifest(tmp, manifest)


__all__ = [
    "REJECT_REASONS",
    "KTOOutcome",
    "PreferenceError",
    "PreferenceExample",
    "Preferences",
    "choose_weights",
    "completion_logps",
    "make_batches",
    "parse_row",
    "preference_files",
    "publish_unchanged",
    "read_preferences",
    "skip_reason",
    "tokenize_pair",
    "train_kto",
]

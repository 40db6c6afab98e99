"""The feedback loop measured end to end: users rate the served bot, the next build learns from it.

From the committed default build, not rebuilt: the project (what git ships, with reports/, dvc.lock
and the demo data) is copied into a throw-away folder, the cache objects dvc.lock names are copied
from this repository's DVC cache (--cache; in a git worktree the main checkout's) into the copy's
own cache, and `dvc checkout` (cache type `copy`) puts models/ and data/ in place; the run stops
("build the default first: make build") when an output of the lock is missing. The shared cache is
only read: what the copy's builds write stays in the copy. Stages whose code or params changed since
the lock was written are recorded (`committed_build.stale_stages`); a round reruns those upstream of
it (the data stages: seconds). Then each arm runs rounds of the loop the README's "Rolling out a new
model" describes:

1. `chatforge promote` (models/served), then `chatforge serve` as a real process on a free loopback
   port (a SQLite store in the copy, an API key from `chatforge keys add`).
2. Simulated users ask the *rated half* of the paraphrase set (data/eval/demo_paraphrases.jsonl,
   split in two per language and intent by a stable hash of the question id) through
   POST /v1/chat/completions, one user id per question. Each answer is judged by the rule evaluate
   uses (chatforge.evaluation.paraphrase.IntentJudge fitted on the train split's original
   conversations, serve.fallback never on-intent) and rated through POST /v1/feedback: +1 on-intent,
   -1 not. A seeded share of the wrong ones (--correct-share) also gets a correction: what a correct
   bot says, the most frequent first assistant answer of the question's intent in its language in
   the train split (on the demo each is on-intent by the same rule; `correction_answers` in the
   JSON). Corrections wait for review: the bench approves them with `chatforge feedback review
   --approve ID` (the reviewer's command, not --include-unreviewed).
3. Export: `chatforge feedback export` (conversations for ingest, data/raw/feedback/) and, in the KTO
   arm, `chatforge feedback export-kto` (data/raw/preferences/kto.jsonl, what the kto stage reads).
4. Incremental rebuild with, in the copy's params.yaml, `train.init_from: served`,
   `train.max_steps: --round-steps`, the README's round settings `train.warmup_steps: 0` and
   `train.lr: --round-lr`, `quantize.source: aligned` (the promoted model is already the small
   served architecture, so distill and prune are not rerun), `evaluate.variants: [int8]`,
   `evaluate.fail_on_gate: false` (the numbers are the point; the gates are recorded), and
   `kto.desirable_weight / undesirable_weight: null` (TRL's imbalance rule: most ratings are
   thumbs-up). `dvc repro evaluate` would also rerun distill and prune (evaluate depends on their
   folders), so the rebuild is `dvc repro quantize` (ingest ... train from models/served, kto,
   quantize) then `dvc repro --single-item evaluate`; each stage timed from dvc's lines.
5. Read reports/evaluate.json (served int8: test BLEU zh / en, slot carry, the forgetting gates
   against the promoted model) and reports/evaluate_details.json (every paraphrase answer with its
   on_intent), split into the rated half (the questions users asked) and the unrated half.

Completion ids are random, so the exported conversations' ids (and with them which augmented
copies and replay rows a round trains on) differ from run to run: two runs of the same command
differ by a few BLEU points and a few on-intent points; compare arms within one run.

Arms: **kto** (export + export-kto: supervised training on thumbs-up and corrections, then the kto
stage on thumbs-up / thumbs-down / corrections) and the named baseline **supervised_only** (today's
loop: `chatforge feedback export` only; without preference rows the kto stage is skipped and passes
the teacher through). Both start from the same copy of the initial build. Round 0 is the committed
build measured by the same evaluate with the same settings (one `dvc repro --single-item evaluate`
before any round; first `dvc repro --single-item kto`, which passes the teacher through, when the
lock predates the kto stage), so before and after compare like with like. Saved to
reports/bench/feedback_loop.json: per arm and round the on-intent rates on both halves, BLEU,
slot carry, the forgetting gates (against the model promoted at the round's start), minutes per
round and per stage, the ratings and corrections sent and the rows exported (the store keeps every
round's feedback, as a service does: `feedback_conversations` and `kto_rows` are cumulative); the
minutes of a full build (the committed reports/timings/*.json); kto / supervised_only ratios.

    python bench/feedback_loop.py                       # 3 rounds of 100 steps, both arms, full evaluate sample (1.5-2.5 h)
    python bench/feedback_loop.py --rounds 1 --round-steps 20 --max-questions 40 --samples-per-lang 30 \\
        --keep /tmp/fl_smoke                           # a smoke run (20-25 minutes); --keep keeps the copies
    python bench/feedback_loop.py -S kto.steps=50       # any round param, both arms (evaluate.* / serve.* also round 0)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from chatforge.data.split import stable_unit
from chatforge.io import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench script
from real_data import run_pipeline, work_dir  # noqa: E402  (the timed `dvc repro` real_data.py runs)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LANGS = ("zh", "en")
PARAPHRASES = "data/eval/demo_paraphrases.jsonl"
SPLIT_SALT = "feedback_loop:half"
ARMS = ("supervised_only", "kto")  # the named baseline first
SERVED = "int8"  # evaluate.variants in a round: the served variant only
BUILD_HINT = "build the default first: make build"


# ------------------------------------------------------------------------------------- pure parts
def split_halves(questions: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(rated, unrated): per language and intent, the questions ordered by stable_unit(id) and the
    first ceil(n / 2) rated, so both halves hold every intent of both languages. Each half keeps
    the input order."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for q in questions:
        groups[(q.lang, q.intent)].append(q)
    rated: set[str] = set()
    for group in groups.values():
        ordered = sorted(group, key=lambda q: (stable_unit(q.id, salt=SPLIT_SALT), q.id))
        rated.update(q.id for q in ordered[: (len(ordered) + 1) // 2])
    return [q for q in questions if q.id in rated], [q for q in questions if q.id not in rated]


def asked_questions(rated: Sequence[Any], max_questions: int | None) -> list[Any]:
    """The rated questions users ask: all of them, or the first `max_questions` in an order that
    takes one question of each (language, intent) before a second of any (rank in its group by
    stable_unit, then stable_unit across groups), so a small sample still covers every intent."""
    if max_questions is None or max_questions >= len(rated):
        return list(rated)
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for q in rated:
        groups[(q.lang, q.intent)].append(q)
    keyed = []
    for group in groups.values():
        ordered = sorted(group, key=lambda q: (stable_unit(q.id, salt=SPLIT_SALT), q.id))
        keyed += [((rank, stable_unit(q.id, salt=SPLIT_SALT + ":ask"), q.id), q) for rank, q in enumerate(ordered)]
    chosen = {q.id for _, q in sorted(keyed, key=lambda kq: kq[0])[:max_questions]}
    return [q for q in rated if q.id in chosen]


def correction_answers(convs: Iterable[Any]) -> dict[tuple[str, str], str]:
    """{(lang, intent): the answer a correct bot gives}: the most frequent first assistant message of
    that intent's conversations in that language (ties: the first in sorted text order). Conversations
    without an intent or an assistant message are skipped."""
    counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for conv in convs:
        first = next((m["content"].strip() for m in conv.messages if m["role"] == "assistant"), "")
        if conv.intent and first:
            counts[(conv.lang, conv.intent)][first] += 1
    return {key: min(c, key=lambda text: (-c[text], text)) for key, c in counts.items()}


def choose_corrections(wrong_ids: Iterable[str], *, share: float, seed: str) -> list[str]:
    """The wrong answers that get a correction: round-half-up(share x n) of them, a seeded sample
    (random.Random(seed)) of the sorted ids; returned sorted."""
    ids = sorted(wrong_ids)
    k = min(len(ids), int(share * len(ids) + 0.5))
    return sorted(random.Random(seed).sample(ids, k))


def _rate(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def on_intent_by_half(details: Mapping[str, Any], *, variant: str, rated_ids: Iterable[str],
                      unrated_ids: Iterable[str]) -> dict[str, Any]:
    """On-intent rates of `variant`'s paraphrase answers in an evaluate_details.json, per half and
    language: on_intent_rated_zh/_en, on_intent_unrated_zh/_en (None for no question) and the
    question counts (questions_rated_zh ...). Questions in neither id set are left out."""
    lang = {q["id"]: q["lang"] for q in details.get("paraphrases", [])}
    answers = details.get("variants", {}).get(variant, {}).get("paraphrases")
    if answers is None:
        raise KeyError(f"evaluate_details has no paraphrase answers for variant {variant!r}")
    halves = {"rated": set(rated_ids), "unrated": set(unrated_ids)}
    hits: dict[str, list[bool]] = defaultdict(list)
    for a in answers:
        for half, ids in halves.items():
            if a["id"] in ids:
                hits[f"{half}_{lang[a['id']]}"].append(bool(a["on_intent"]))
    out: dict[str, Any] = {}
    for half in halves:
        for lg in LANGS:
            out[f"on_intent_{half}_{lg}"] = _rate(hits[f"{half}_{lg}"])
            out[f"questions_{half}_{lg}"] = len(hits[f"{half}_{lg}"])
    return out


def ratio(a: Any, b: Any) -> float | None:
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (a, b))
    return a / b if ok and b else None


def finite(x: Any) -> Any:
    """JSON-safe: NaN / inf -> None, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    return x


# ------------------------------------------------------------------------------- the project copy
def default_cache() -> Path:
    """This repository's DVC cache: ROOT/.dvc/cache, or in a git worktree the main checkout's."""
    own = ROOT / ".dvc" / "cache"
    if own.is_dir():
        return own
    common = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    return (ROOT / common).resolve().parent / ".dvc" / "cache"


def env_for(dest: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(dest / "src"),
            "HF_HUB_OFFLINE": "1"}


def run(cmd: Sequence[str], dest: Path, *, quiet: bool = False) -> str:
    """Run a command in the copy; its output is returned (and echoed unless quiet). Exits naming the
    command on failure."""
    proc = subprocess.run(list(cmd), cwd=dest, env=env_for(dest), capture_output=True, text=True)
    if not quiet or proc.returncode:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
    if proc.returncode:
        sys.exit(f"feedback_loop: `{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}) in {dest}")
    return proc.stdout


def copy_project(dest: Path) -> None:
    """What git would ship (tracked + untracked-not-ignored), reports/, dvc.lock and the demo data
    included; not .dvc/ (config and state come from `dvc init`), not DVC outputs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for rel in files:
        src = ROOT / rel
        if rel.startswith(".dvc/") and not rel.startswith(".dvc/plots/"):
            continue
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def locked_outs(dest: Path) -> dict[str, list[dict[str, Any]]]:
    """{stage: its cached outputs (path, md5)} as the committed dvc.lock records them; the outputs
    dvc.yaml declares `cache: false` (reports, git-tracked) are left out."""
    lock = yaml.safe_load((dest / "dvc.lock").read_text(encoding="utf-8")) or {}
    pipeline = yaml.safe_load((dest / "dvc.yaml").read_text(encoding="utf-8")) or {}
    uncached = {path for stage in pipeline.get("stages", {}).values() for kind in ("outs", "metrics", "plots")
                for item in stage.get(kind, []) if isinstance(item, dict)
                for path, opts in item.items() if isinstance(opts, dict) and opts.get("cache") is False}
    return {name: [o for o in stage.get("outs", []) if o["path"] not in uncached]
            for name, stage in lock.get("stages", {}).items()}


def seed_cache(dest: Path, shared: Path, outs: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Copy the cache objects of the locked outputs (directory manifests and their files) from the
    shared cache into the copy's own .dvc/cache, so the copy's `dvc checkout` and `dvc status` find
    them while whatever the copy's builds write stays in its own cache; the shared cache is only
    read. Returns the outputs whose objects are missing there."""
    own = dest / ".dvc" / "cache"

    def obj(md5: str) -> Path:
        return Path("files") / "md5" / md5[:2] / md5[2:]

    def take(md5: str) -> bool:
        src = shared / obj(md5)
        if not src.is_file():
            return False
        (own / obj(md5)).parent.mkdir(parents=True, exist_ok=True)
        if not (own / obj(md5)).exists():
            shutil.copyfile(src, own / obj(md5))
        return True

    missing = []
    for stage_outs in outs.values():
        for out in stage_outs:
            md5 = out.get("md5")
            if out.get("cache") is False or not md5:
                continue
            ok = take(md5)
            if ok and md5.endswith(".dir"):
                entries = json.loads((shared / obj(md5)).read_text(encoding="utf-8"))
                ok = all([take(e["md5"]) for e in entries])
            if not ok:
                missing.append(out["path"])
    return missing


def prepare_initial(dest: Path, cache: Path) -> dict[str, Any]:
    """The committed build, checked out from `cache` into a fresh copy at `dest`. Returns what the
    check found: the stages whose code or params changed since the lock was written (stale; a round
    reruns those upstream of it) and the stages with no lock entry."""
    if not (ROOT / "dvc.lock").is_file():
        sys.exit(f"feedback_loop: {ROOT / 'dvc.lock'} not found; {BUILD_HINT}")
    if not cache.is_dir():
        sys.exit(f"feedback_loop: DVC cache {cache} not found; {BUILD_HINT} (or pass --cache DIR)")
    copy_project(dest)
    plots = dest / ".dvc" / "plots"
    if plots.exists():  # dvc init refuses a folder that has .dvc/ already
        shutil.move(str(plots), str(dest / "plots.tmp"))
        shutil.rmtree(dest / ".dvc")
    dvc = str(BIN / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=dest, check=True)
    if (dest / "plots.tmp").exists():
        shutil.rmtree(dest / ".dvc" / "plots", ignore_errors=True)
        shutil.move(str(dest / "plots.tmp"), str(dest / ".dvc" / "plots"))
    outs = locked_outs(dest)
    missing = seed_cache(dest, cache, outs)
    if missing:
        sys.exit(f"feedback_loop: the committed build's outputs {missing[:6]} are not in {cache}; {BUILD_HINT}")
    # workspace files are copies, never links into a cache (DVC protects linked files)
    run([dvc, "config", "--local", "cache.type", "copy"], dest, quiet=True)
    # a stage the lock does not know yet (added since the build) fails its checkout: judged below
    subprocess.run([dvc, "checkout"], cwd=dest, env=env_for(dest), capture_output=True, text=True)
    absent = [o["path"] for stage_outs in outs.values() for o in stage_outs if not (dest / o["path"]).exists()]
    status = json.loads(run([dvc, "status", "--json"], dest, quiet=True) or "{}")
    changed_outs = {s: [c for c in v if isinstance(c, dict) and "changed outs" in c] for s, v in status.items() if s in outs}
    if absent or any(changed_outs.values()) or not (dest / "models").is_dir() or not (dest / "data" / "split").is_dir():
        sys.exit(f"feedback_loop: the committed build did not check out whole (absent: {absent[:6]}; changed: "
                 f"{ {s: c for s, c in changed_outs.items() if c} }); {BUILD_HINT}")
    for cmd in (["git", "add", "-A"],
                ["git", "-c", "user.email=bench@chatforge", "-c", "user.name=bench", "commit", "-qm", "committed build"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return {"stale_stages": sorted(s for s in status if s in outs),
            "unlocked_stages": sorted(s for s in status if s not in outs)}


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[key] = value


def write_params(dest: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
    for key, value in overrides.items():
        set_dotted(params, key, value)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return params


def eval_overrides(samples_per_lang: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"evaluate.variants": [SERVED], "evaluate.fail_on_gate": False}
    if samples_per_lang is not None:
        out["evaluate.max_samples_per_lang"] = samples_per_lang
    return out


def extra_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """-S KEY=VALUE, values read as YAML."""
    out = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def before_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Round 0's params: the rounds' evaluate settings (and any -S of evaluate or serve) on the committed build."""
    extra = {k: v for k, v in extra_overrides(args).items() if k.startswith(("evaluate.", "serve."))}
    return {**eval_overrides(args.samples_per_lang), **extra}


def round_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The params of every round, both arms alike (-S KEY=VALUE last)."""
    extra = extra_overrides(args)
    return {"train.init_from": "served", "train.max_steps": args.round_steps, "train.warmup_steps": 0,
            "train.lr": args.round_lr, "quantize.source": "aligned",
            "kto.desirable_weight": None, "kto.undesirable_weight": None,
            **eval_overrides(args.samples_per_lang), **extra}


def repro(dest: Path, *targets: str, single: bool = False) -> dict[str, float]:
    """`dvc repro [--single-item] TARGETS` in the copy, its output streamed; wall seconds per stage
    that ran (from dvc's "Running stage" lines). Exits on failure."""
    times, rc = run_pipeline(dest, *(["--single-item"] if single else []), *targets)
    if rc:
        sys.exit(f"feedback_loop: `dvc repro {' '.join(targets)}` failed (exit {rc}) in {dest}; "
                 "rerun with --keep DIR to read it")
    return times


# ------------------------------------------------------------------------------------ the service
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`chatforge serve` on a free loopback port in the copy, the store a SQLite file there; a
    params copy with the rate limit raised (one key stands for every simulated user)."""

    def __init__(self, dest: Path, *, database_url: str, keys: Path, log: Path) -> None:
        params = yaml.safe_load((dest / "params.yaml").read_text(encoding="utf-8"))
        params["serve"]["rate_limit"] = {"requests_per_minute": 1_000_000, "burst": 100_000}
        self.params_file = dest / "loop" / "serve_params.yaml"
        self.params_file.parent.mkdir(parents=True, exist_ok=True)
        self.params_file.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [str(BIN / "chatforge"), "serve", "--params", str(self.params_file), "--keys", str(keys),
                 "--port", str(self.port), "--database-url", database_url],
                cwd=dest, env=env_for(dest), stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                sys.exit(f"feedback_loop: chatforge serve exited ({self.process.returncode}): "
                         f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                sys.exit(f"feedback_loop: chatforge serve gave no /healthz answer in {timeout_s:.0f} s ({self.log})")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    for attempt in range(5):
        resp = client.post(path, json=body)
        if resp.status_code == 429 and attempt < 4:  # should not happen with the raised limit
            time.sleep(float(resp.headers.get("retry-after", 1)))
            continue
        if resp.status_code != 200:
            sys.exit(f"feedback_loop: POST {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json()
    raise AssertionError("unreachable")


def simulate_users(url: str, key: str, asked: Sequence[Any], *, judge: Any, corrections: Mapping[tuple[str, str], str],
                   correct_share: float, seed: str) -> dict[str, Any]:
    """Ask, judge, rate (+1 / -1) and correct a seeded share of the wrong answers. Returns the counts
    and the feedback ids of the corrections (to approve)."""
    import httpx

    answers: dict[str, tuple[str, str, bool]] = {}  # question id -> (completion id, answer, on intent)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for q in asked:
            done = post(client, "/v1/chat/completions", {"model": "chatforge", "user": f"bench-{q.id}",
                                                         "messages": [{"role": "user", "content": q.question}]})
            text = done["choices"][0]["message"]["content"] or ""
            answers[q.id] = (done["id"], text, judge.on_intent(text, q.intent, lang=q.lang))
        wrong = [q.id for q in asked if not answers[q.id][2]]
        corrected = set(choose_corrections(wrong, share=correct_share, seed=seed))
        feedback_ids: list[int] = []
        counts: Counter[str] = Counter()
        for q in asked:
            completion_id, _, on_intent = answers[q.id]
            body: dict[str, Any] = {"completion_id": completion_id, "rating": 1 if on_intent else -1}
            if q.id in corrected:
                body["correction"] = corrections[(q.lang, q.intent)]
            done = post(client, "/v1/feedback", body)
            counts[f"thumbs_up_{q.lang}" if on_intent else f"thumbs_down_{q.lang}"] += 1
            if q.id in corrected:
                counts[f"corrections_{q.lang}"] += 1
                if done.get("correction_review") == "pending":
                    feedback_ids.append(int(done["id"]))
                else:
                    counts["corrections_not_pending"] += 1
    live = {f"on_intent_live_{lg}": _rate([answers[q.id][2] for q in asked if q.lang == lg]) for lg in LANGS}
    return {"asked": len(asked), **{k: counts.get(k, 0) for k in (
        "thumbs_up_zh", "thumbs_up_en", "thumbs_down_zh", "thumbs_down_en", "corrections_zh", "corrections_en",
        "corrections_not_pending")}, **live, "approve_ids": feedback_ids}


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0


# ---------------------------------------------------------------------------------------- a round
def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def fit_judge(dest: Path) -> Any:
    """The on-intent rule exactly as evaluate builds it: the train split's original conversations,
    serve.fallback's messages never on-intent."""
    import polars as pl

    from chatforge.evaluation.paraphrase import IntentJudge
    from chatforge.params import load_section
    from chatforge.runtime.conversation import conversations

    train = pl.read_parquet(dest / "data" / "split" / "train.parquet")
    serve = load_section("serve", path=dest / "params.yaml")
    return IntentJudge(conversations(train.filter(pl.col("method") == "original")), fallbacks=serve.fallback.values())


def measure(dest: Path, *, rated_ids: Sequence[str], unrated_ids: Sequence[str]) -> dict[str, Any]:
    """The served variant's numbers from the copy's reports."""
    evaluation = read_json(dest / "reports" / "evaluate.json")
    details = read_json(dest / "reports" / "evaluate_details.json")
    served = evaluation.get("summary", {}).get("served_variant", SERVED)
    block = evaluation[served]
    gates = evaluation.get("gates", {})
    out: dict[str, Any] = {
        **on_intent_by_half(details, variant=served, rated_ids=rated_ids, unrated_ids=unrated_ids),
        "on_intent_all_zh": block.get("paraphrase_on_intent_zh"), "on_intent_all_en": block.get("paraphrase_on_intent_en"),
        "bleu_zh": block.get("bleu_zh"), "bleu_en": block.get("bleu_en"), "slot_carry": block.get("slot_carry"),
        "fallback_rate": block.get("fallback_rate"), "degenerate_rate": block.get("degenerate_rate"),
        "samples_zh": evaluation["summary"].get("samples_zh"), "samples_en": evaluation["summary"].get("samples_en"),
        "samples_sha256": evaluation["summary"].get("samples_sha256"),
        "forgetting_gates": {k: {"status": g.get("status"), "value": g.get("value"), "limit": g.get("limit")}
                             for k, g in gates.items() if k.startswith("forgetting")},
        "gates_failed": sorted(k for k, g in gates.items() if g.get("status") == "fail"),
    }
    if "previous" in evaluation:
        out["previous"] = {k: evaluation["previous"].get(k)
                           for k in ("same_test_samples", "bleu_zh", "bleu_en", "slot_carry")}
    return out


def run_round(dest: Path, arm: str, r: int, args: argparse.Namespace, *, asked: Sequence[Any],
              rated_ids: Sequence[str], unrated_ids: Sequence[str], corrections: Mapping[tuple[str, str], str],
              key: str, keys: Path) -> dict[str, Any]:
    chatforge = str(BIN / "chatforge")
    database_url = f"sqlite:///{dest / 'loop' / 'feedback.db'}"
    steps: dict[str, float] = {}
    t_round = time.perf_counter()
    t = time.perf_counter()
    run([chatforge, "promote"], dest)
    steps["promote"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    judge = fit_judge(dest)
    server = Server(dest, database_url=database_url, keys=keys, log=dest / "loop" / f"serve-r{r}.log")
    try:
        server.wait_ready()
        steps["serve_start"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        sent = simulate_users(server.url, key, asked, judge=judge, corrections=corrections,
                              correct_share=args.correct_share, seed=f"{args.seed}:{arm}:{r}")
    finally:
        server.stop()
    steps["users"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    approve = sent.pop("approve_ids")
    for i in range(0, len(approve), 200):
        run([chatforge, "feedback", "review", "--database-url", database_url,
             *[a for fid in approve[i:i + 200] for a in ("--approve", str(fid))]], dest, quiet=True)
    run([chatforge, "feedback", "export", "--database-url", database_url], dest)
    sent["feedback_conversations"] = count_lines(dest / "data/raw/feedback/feedback.jsonl")
    if arm == "kto":
        run([chatforge, "feedback", "export-kto", "--database-url", database_url], dest)
    kto_rows = dest / "data/raw/preferences/kto.jsonl"
    sent["kto_rows"] = count_lines(kto_rows)
    if kto_rows.is_file():
        labels = [json.loads(line)["label"] for line in kto_rows.read_text(encoding="utf-8").splitlines() if line.strip()]
        sent["kto_desirable"], sent["kto_undesirable"] = sum(labels), len(labels) - sum(labels)
    steps["export"] = round(time.perf_counter() - t, 1)
    write_params(dest, round_overrides(args))
    t = time.perf_counter()
    stages = repro(dest, "quantize")
    stages |= repro(dest, "evaluate", single=True)
    steps["rebuild"] = round(time.perf_counter() - t, 1)
    result = measure(dest, rated_ids=rated_ids, unrated_ids=unrated_ids)
    train = read_json(dest / "reports" / "train.json")
    kto = read_json(dest / "reports" / "kto.json") if (dest / "reports" / "kto.json").is_file() else {}
    return {
        "round": r, **result, "sent": sent,
        "train": {k: train.get(k) for k in ("init_from", "steps", "replay_feedback_conversations", "replay_conversations",
                                            "replay_rows", "val_loss")},
        "kto": {k: kto.get(k) for k in ("skipped", "skip_reason", "rows", "desirable", "undesirable", "desirable_weight",
                                         "undesirable_weight", "steps", "loss_first", "loss_last", "reward_margin_after",
                                         "kl_after")},
        "minutes": round((time.perf_counter() - t_round) / 60, 2),
        "rebuild_minutes": round(steps["rebuild"] / 60, 2),
        "step_seconds": steps, "stage_seconds": stages,
    }


# -------------------------------------------------------------------------------------- reporting
KEYS = ("on_intent_rated_zh", "on_intent_rated_en", "on_intent_unrated_zh", "on_intent_unrated_en",
        "bleu_zh", "bleu_en", "slot_carry")


def full_build_minutes(timings: Path) -> dict[str, Any]:
    seconds = {p.stem: read_json(p).get("wall_seconds", 0.0) for p in sorted(timings.glob("*.json"))}
    return {"minutes": round(sum(seconds.values()) / 60, 1), "stage_seconds": seconds}


def compare_arms(arms: Mapping[str, list[dict[str, Any]]], *, full_build_minutes: float) -> dict[str, Any]:
    """kto / supervised_only per key, after the first and after the last round; the gain of each arm
    over round 0 (after - before); each arm's mean round minutes over a full build's."""
    out: dict[str, Any] = {}
    base, kto = arms["supervised_only"], arms["kto"]
    for label, i in (("round_1", 1), ("last_round", -1)):
        if len(base) > 1 and len(kto) > 1:
            out[f"kto_vs_supervised_only_{label}"] = {k: ratio(kto[i].get(k), base[i].get(k))
                                                      for k in (*KEYS, "minutes", "rebuild_minutes")}
    for name, rounds in arms.items():
        mean = sum(r["minutes"] for r in rounds[1:]) / max(1, len(rounds) - 1)
        out[f"round_vs_full_build_{name}"] = ratio(mean, full_build_minutes)
    for name, rounds in arms.items():
        first, last = rounds[0], rounds[-1]
        numbers = [k for k in KEYS if isinstance(last.get(k), (int, float)) and isinstance(first.get(k), (int, float))]
        out[f"gain_{name}"] = {k: (last[k] - first[k]) if k in numbers else None for k in KEYS}
    return out


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def print_table(result: dict[str, Any]) -> None:
    arms = result["arms"]
    cols: list[tuple[str, dict[str, Any]]] = [("before", arms["supervised_only"][0])]
    for name in ARMS:
        rounds = arms[name][1:]
        picks = [rounds[0]] + ([rounds[-1]] if len(rounds) > 1 else [])
        cols += [(f"{'sup' if name == 'supervised_only' else 'kto'} r{c['round']}", c) for c in picks]
    last = result["ratios"].get("kto_vs_supervised_only_last_round", {})
    print(f"\nfeedback loop: {result['rounds']} round(s) of {result['round_steps']} steps, {result['asked_per_round']} "
          f"rated questions per round; full build {result['full_build']['minutes']} min")
    print(f"  {'':22s}" + "".join(f"{name:>11s}" for name, _ in cols) + f"{'kto/sup':>11s}")
    for key in (*KEYS, "minutes", "rebuild_minutes"):
        print(f"  {key:22s}" + "".join(f"{fmt(c.get(key)):>11s}" for _, c in cols) + f"{fmt(last.get(key)):>11s}")
    for label, key in (("ratings up/down", None), ("corrections", None), ("kto rows", "kto_rows")):
        cells = []
        for _, c in cols:
            s = c.get("sent")
            if not s:
                cells.append("-")
            elif label == "ratings up/down":
                cells.append(f"{s['thumbs_up_zh'] + s['thumbs_up_en']}/{s['thumbs_down_zh'] + s['thumbs_down_en']}")
            elif label == "corrections":
                cells.append(str(s["corrections_zh"] + s["corrections_en"]))
            else:
                cells.append(str(s.get(key, 0)))
        print(f"  {label:22s}" + "".join(f"{cell:>11s}" for cell in cells))
    for name, c in cols[1:]:
        gates = c.get("forgetting_gates", {})
        print(f"  {name}: forgetting gates " + ", ".join(
            f"{k.removeprefix('forgetting_')} {g['status']} (drop {fmt(g['value'])})" for k, g in sorted(gates.items())))
    shares = ", ".join(f"{name} {fmt(result['ratios'].get(f'round_vs_full_build_{name}'))}" for name in ARMS)
    print(f"  a round / a full build ({result['full_build']['minutes']} min): {shares}; round 0's evaluate "
          f"{fmt(arms[ARMS[0]][0].get('evaluate_minutes'))} min")


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="feedback rounds per arm (>= 1)")
    ap.add_argument("--round-steps", type=int, default=100, help="train.max_steps of a round")
    ap.add_argument("--round-lr", type=float, default=1e-4, help="train.lr of a round (README's round setting)")
    ap.add_argument("--correct-share", type=float, default=0.5, help="share of wrong answers that get a correction")
    ap.add_argument("--max-questions", type=int, default=None,
                    help="rated questions asked per round (default: the whole rated half)")
    ap.add_argument("--samples-per-lang", type=int, default=None,
                    help="evaluate.max_samples_per_lang (default: params.yaml's)")
    ap.add_argument("--seed", type=int, default=0, help="which wrong answers get a correction")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                    help="a round's params override KEY=VALUE (both arms), e.g. -S kto.steps=50")
    ap.add_argument("--cache", type=Path, default=None,
                    help="the DVC cache holding the committed build (default: this repository's)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "feedback_loop.json")
    args = ap.parse_args()
    if args.rounds < 1 or args.round_steps < 1 or not 0 <= args.correct_share <= 1:
        ap.error("--rounds and --round-steps must be >= 1, --correct-share in [0, 1]")
    work, cleanup = work_dir(args.keep, "chatforge-feedback-")
    t0 = time.perf_counter()

    import polars as pl

    from chatforge.evaluation.paraphrase import read_paraphrases
    from chatforge.runtime.conversation import conversations

    initial = work / "initial"
    initial.mkdir()
    check = prepare_initial(initial, (args.cache or default_cache()).resolve())
    print(f"committed build checked out in {initial}; stale stages (rerun where a round reaches them): "
          f"{', '.join(check['stale_stages']) or 'none'}; not in dvc.lock: {', '.join(check['unlocked_stages']) or 'none'}")
    questions = read_paraphrases(initial / PARAPHRASES)
    rated, unrated = split_halves(questions)
    asked = asked_questions(rated, args.max_questions)
    rated_ids, unrated_ids = [q.id for q in asked], [q.id for q in unrated]
    train = pl.read_parquet(initial / "data" / "split" / "train.parquet")
    corrections = correction_answers(conversations(train.filter(pl.col("method") == "original")))
    missing = sorted({(q.lang, q.intent) for q in asked} - set(corrections))
    if missing:
        sys.exit(f"feedback_loop: no train answer to correct with for {missing[:5]}")

    # round 0: the committed build measured by the rounds' evaluate settings (kto's pass-through first:
    # evaluate depends on models/aligned, which a build from before the kto stage lacks)
    write_params(initial, before_overrides(args))
    t = time.perf_counter()
    stages0 = repro(initial, "kto", single=True) if not (initial / "models" / "aligned").exists() else {}
    stages0 |= repro(initial, "evaluate", single=True)
    before = {"round": 0, **measure(initial, rated_ids=rated_ids, unrated_ids=unrated_ids),
              "evaluate_minutes": round((time.perf_counter() - t) / 60, 2), "stage_seconds": stages0}
    keys = initial / "loop" / "api_keys.json"
    keys.parent.mkdir(parents=True, exist_ok=True)
    key = run([str(BIN / "chatforge"), "keys", "add", "bench", "--keys", str(keys)], initial,
              quiet=True).strip().splitlines()[-1]

    arms: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        dest = work / arm
        shutil.copytree(initial, dest, symlinks=True)
        arms[arm] = [before]
        for r in range(1, args.rounds + 1):
            print(f"\n=== {arm}: round {r} of {args.rounds} ===", flush=True)
            arms[arm].append(run_round(dest, arm, r, args, asked=asked, rated_ids=rated_ids, unrated_ids=unrated_ids,
                                       corrections=corrections, key=key, keys=dest / "loop" / "api_keys.json"))

    result = {
        "benchmark": "feedback_loop",
        "baseline": "supervised_only: today's loop (chatforge feedback export: thumbs-up and corrections as training "
                    "conversations; no preference rows, so the kto stage passes the teacher through)",
        "rounds": args.rounds, "round_steps": args.round_steps, "round_lr": args.round_lr,
        "correct_share": args.correct_share, "seed": args.seed,
        "samples_per_lang": args.samples_per_lang, "max_questions": args.max_questions,
        "questions": {"total": len(questions), "rated_half": len(rated), "unrated_half": len(unrated)},
        "asked_per_round": len(asked),
        "correction_answers": {f"{lang}/{intent}": text for (lang, intent), text in sorted(corrections.items())},
        "overrides": args.overrides,
        "round_params": finite(round_overrides(args)),
        "committed_build": check,
        "full_build": full_build_minutes(ROOT / "reports" / "timings"),
        "arms": arms,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    result["ratios"] = compare_arms(arms, full_build_minutes=result["full_build"]["minutes"])
    result = finite(result)
    write_json(result, args.out)
    print_table(result)
    print(f"  -> {args.out}")
    if cleanup is not None:
        cleanup.cleanup()


if __name__ == "__main__":
    main()

"""The `chatforge` command: params check, serve, chat, feedback export, A/B report, ...

Sub-commands import their heavy modules lazily so `chatforge --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="chatforge: build, evaluate and serve your own chatbot model.", no_args_is_help=True)
params_app = typer.Typer(help="Inspect and validate params.yaml.", no_args_is_help=True)
app.add_typer(params_app, name="params")


@params_app.command("check")
def params_check(
    path: Annotated[Path, typer.Argument(help="The params file to validate.")] = Path("params.yaml"),
) -> None:
    """Validate every section of PATH; print each bad key with its value and what is allowed."""
    from chatforge.params import ParamsError, load_all

    try:
        sections = load_all(path)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"{path}: ok ({len(sections)} sections: {', '.join(sections)})")


# ==== sub-commands registered by later issues go below (one small block each) ====


@app.command("chat")
def chat(
    model_dir: Annotated[Path, typer.Argument(help="Any variant folder the pipeline built (models/teacher, models/onnx, ...).")],
    backend: Annotated[str, typer.Option(help="auto | torch | onnx | onnx_int8 (auto prefers INT8 ONNX).")] = "auto",
    persona: Annotated[str | None, typer.Option(help="A persona preset from params.yaml serve.personas.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="0 = greedy; default serve.temperature (0.7), seeded per conversation as serve does; persona presets use 0.7-1.2.")] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Default serve.top_p (0.9).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=2048)] = 128,
    params_path: Annotated[Path, typer.Option("--params", help="params.yaml with serve.personas.")] = Path("params.yaml"),
    raw: Annotated[bool, typer.Option("--raw", help="Stream the model's own tokens: no confidence threshold, no retrieval in the loop.")] = False,
) -> None:
    """Chat with a built model in the terminal, answering as `chatforge serve` does (confidence
    threshold, retrieval in the loop, fallback; --raw: the model alone). Type /persona NAME,
    /temperature X, /reset or /exit."""
    import sys

    from chatforge.chat import Persona, Served, chat_loop
    from chatforge.params import ServeParams
    from chatforge.runtime.decode import GenerationConfig
    from chatforge.serving.backends import open_backend

    presets: dict[str, Persona] = {}
    fields = ServeParams.model_fields  # without a params file: serve's defaults for the answer rules
    hybrid, served = fields["hybrid"].get_default(call_default_factory=True), None
    rules = (fields["confidence_threshold"].default, fields["confidence_tokens"].default,
             fields["fallback"].get_default(call_default_factory=True))
    sampling = (fields["temperature"].default, fields["top_p"].default, fields["seed"].default)
    if params_path.exists():
        from chatforge.params import ParamsError, load_section

        try:
            serve = load_section("serve", path=params_path)
            presets = {n: Persona(n, p.temperature, p.top_p, p.system_prompt) for n, p in serve.personas.items()}
            hybrid, rules = serve.hybrid, (serve.confidence_threshold, serve.confidence_tokens, serve.fallback)
            sampling = (serve.temperature, serve.top_p, serve.seed)
        except ParamsError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    if not raw:
        served = Served(rules[0], rules[1], dict(rules[2]))
    if persona is not None and persona not in presets:
        typer.echo(f"unknown persona {persona!r}; choose one of: {', '.join(sorted(presets)) or 'none configured'}", err=True)
        raise typer.Exit(2)
    chosen = presets.get(persona) if persona else None
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        temperature=chosen.temperature if chosen else (sampling[0] if temperature is None else temperature),
        top_p=chosen.top_p if chosen else (sampling[1] if top_p is None else top_p),
    )
    try:
        model = open_backend(model_dir, backend=backend, hybrid=None if raw else hybrid)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"chat: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"chatforge chat: {model_dir} ({model.family}, {model.fingerprint}). /exit to quit.")

    def lines():
        while True:
            try:
                yield input("you> ")
            except EOFError:
                return

    chat_loop(model, lines(), lambda s: (sys.stdout.write(s), sys.stdout.flush()), config=config, persona=chosen,
              personas=presets, served=served, seed=sampling[2])

# ---- serving (issue 7): serve, keys add, feedback export, ab report
keys_app = typer.Typer(help="Manage the API keys `chatforge serve` accepts (stored hashed).", no_args_is_help=True)
feedback_app = typer.Typer(help="The feedback loop: ratings collected by the service -> training data.", no_args_is_help=True)
ab_app = typer.Typer(help="A/B tests between served variants.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(feedback_app, name="feedback")
app.add_typer(ab_app, name="ab")

ParamsOpt = Annotated[Path, typer.Option("--params", envvar="CHATFORGE_PARAMS", help="params.yaml with the serve section.")]
DatabaseOpt = Annotated[
    str | None, typer.Option("--database-url", envvar="CHATFORGE_DATABASE_URL", help="Overrides serve.database_url.")
]
KeysOpt = Annotated[Path, typer.Option("--keys", envvar="CHATFORGE_API_KEYS", help="The API keys file (JSON, hashes only).")]


def _serve_params(path: Path, database_url: str | None):
    from chatforge.params import ParamsError, load_section

    try:
        params = load_section("serve", path=path)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    return params.model_copy(update={"database_url": database_url}) if database_url else params


@app.command("serve")
def serve(
    params: ParamsOpt = Path("params.yaml"),
    keys: Annotated[Path | None, typer.Option("--keys", envvar="CHATFORGE_API_KEYS", help="API keys file.")] = None,
    host: Annotated[str, typer.Option(envvar="CHATFORGE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CHATFORGE_PORT")] = 8000,
    workers: Annotated[int, typer.Option(envvar="CHATFORGE_WORKERS", min=1, help="uvicorn worker processes.")] = 1,
    redis_url: Annotated[str | None, typer.Option(envvar="CHATFORGE_REDIS_URL", help="Overrides serve.redis_url ('' = off).")] = None,
    database_url: DatabaseOpt = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Accept requests without an API key (local only).")] = False,
    threads: Annotated[int | None, typer.Option(envvar="CHATFORGE_THREADS", min=1, help="torch CPU threads per worker.")] = None,
) -> None:
    """Serve the built model(s) behind an OpenAI-compatible API, the web chat page at /."""
    import os

    import uvicorn

    from chatforge.io import setup_logging
    from chatforge.params import ParamsError
    from chatforge.serving.config import CONFIG_ENV, check_files, load_serve_config

    setup_logging("serve")
    try:
        config = load_serve_config(params, api_keys_file=keys, require_auth=not no_auth, redis_url=redis_url,
                                   database_url=database_url, threads=threads)
    except (ParamsError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    if keys is not None and not keys.exists():
        typer.echo(f"{keys}: API keys file not found. Create it with `chatforge keys add NAME --keys {keys}`.", err=True)
        raise typer.Exit(code=2)
    try:
        check_files(config.params)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    for v in config.params.variants:
        if v.upstream is not None and v.upstream.api_key_env and not os.environ.get(v.upstream.api_key_env, "").strip():
            typer.echo(f"variant {v.name!r}: upstream.api_key_env names {v.upstream.api_key_env}, which is not set; export "
                       "it with the upstream's API key, or remove api_key_env if the upstream needs none.", err=True)
            raise typer.Exit(code=2)
    if workers > 1 and not config.params.redis_url:
        typer.echo(f"warning: without serve.redis_url (or --redis-url) each of the {workers} workers counts the "
                   f"rate limit on its own, so a key gets {workers} x its budget; set a Redis URL to share it.",
                   err=True)
    os.environ[CONFIG_ENV] = config.to_json()
    uvicorn.run("chatforge.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_config=None, proxy_headers=True)


@keys_app.command("add")
def keys_add(name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")], keys: KeysOpt = Path("api_keys.json")) -> None:
    """Create an API key: its hash goes into the keys file, the key itself is printed once."""
    from chatforge.serving.auth import add_key

    try:
        record, plain = add_key(keys, name=name)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"created {record.id} ({name}) in {keys}; the key (shown only now):", err=True)
    typer.echo(plain)


@feedback_app.command("export")
def feedback_export(
    out: Annotated[Path, typer.Option(help="JSONL file ingest reads (format `feedback`).")] = Path("data/raw/feedback/feedback.jsonl"),
    params: ParamsOpt = Path("params.yaml"),
    database_url: DatabaseOpt = None,
    include_unreviewed: Annotated[
        bool, typer.Option("--include-unreviewed", help="Also export corrections not yet approved (never flagged or rejected ones).")
    ] = False,
) -> None:
    """Write positively rated conversations and approved corrections for the next `dvc repro` to learn from."""
    from chatforge.io import write_jsonl
    from chatforge.serving.feedback_export import describe_held_back, export_feedback
    from chatforge.serving.store import open_store

    serve_params = _serve_params(params, database_url)
    exported = export_feedback(open_store(serve_params.database_url), include_unreviewed=include_unreviewed)
    n = write_jsonl(exported.rows, out)
    typer.echo(f"wrote {n} conversations to {out}; `dvc status` now shows ingest as changed if they are new")
    held = describe_held_back(exported.held_back)
    if held:
        typer.echo(held, err=True)


@feedback_app.command("export-kto")
def feedback_export_kto(
    out: Annotated[Path, typer.Option(help="JSONL of KTO examples (prompt, completion, label). The default is where the kto "
                                           "stage reads (dvc.yaml: data/raw/preferences, every *.jsonl but *.rejects.jsonl); "
                                           "ingest does not read it.")] = Path("data/raw/preferences/kto.jsonl"),
    params: ParamsOpt = Path("params.yaml"),
    database_url: DatabaseOpt = None,
    include_unreviewed: Annotated[
        bool, typer.Option("--include-unreviewed", help="Also export corrections not yet approved (never flagged or rejected ones).")
    ] = False,
) -> None:
    """Write rated answers as KTO examples: thumbs-up and approved corrections desirable, thumbs-down undesirable.

    By default to data/raw/preferences/kto.jsonl, which the next `dvc repro` trains on (the kto stage).
    Feedback that cannot become an example goes to <out stem>.rejects.jsonl with a reason.
    """
    from chatforge.io import write_jsonl
    from chatforge.modeling.kto import default_weights
    from chatforge.serving.feedback_export import describe_held_back, export_kto
    from chatforge.serving.store import open_store

    serve_params = _serve_params(params, database_url)
    exported = export_kto(open_store(serve_params.database_url), include_unreviewed=include_unreviewed)
    n = write_jsonl(exported.rows, out)
    rejects_path = out.with_name(f"{out.stem}.rejects.jsonl")
    write_jsonl(exported.rejects, rejects_path)
    desirable = sum(row["label"] for row in exported.rows)
    typer.echo(f"wrote {n} KTO examples ({desirable} desirable, {n - desirable} undesirable) to {out}")
    if n:
        weight_d, weight_u = default_weights(desirable, n - desirable)
        typer.echo(f"weights that meet TRL's [1, 4/3] rule for these counts: desirable_weight={weight_d}, "
                   f"undesirable_weight={weight_u}")
    if exported.rejects:
        typer.echo(f"rejected {len(exported.rejects)} feedback rows, reasons in {rejects_path}", err=True)
    skipped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in exported.skipped.items() if count)
    if skipped:
        typer.echo(f"no example from: {skipped}", err=True)
    held = describe_held_back(exported.held_back)
    if held:
        typer.echo(held, err=True)


def _preview(text: str, max_chars: int = 60) -> str:
    # user text on a reviewer's terminal: one line, no control characters (escape sequences)
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1].rstrip() + "…"


@feedback_app.command("review")
def feedback_review(
    approve: Annotated[list[int] | None, typer.Option("--approve", help="Approve the correction with this id (repeatable).")] = None,
    reject: Annotated[list[int] | None, typer.Option("--reject", help="Reject the correction with this id (repeatable).")] = None,
    held: Annotated[bool, typer.Option("--held", help="List the corrections the sensitive-word filter flagged instead.")] = False,
    params: ParamsOpt = Path("params.yaml"),
    database_url: DatabaseOpt = None,
) -> None:
    """List corrections awaiting review (id, completion id, rating, preview), or approve / reject them by id.

    Only approved corrections are exported as training data (`chatforge feedback export`).
    """
    from chatforge.serving.store import list_corrections, open_store, set_review

    approve, reject = approve or [], reject or []
    both = sorted(set(approve) & set(reject))
    if both:
        typer.echo(f"ids given to both --approve and --reject: {both[:10]}; give each id once.", err=True)
        raise typer.Exit(code=2)
    sessions = open_store(_serve_params(params, database_url).database_url)
    if approve or reject:
        missing = []
        for status, ids in (("approved", approve), ("rejected", reject)):
            for feedback_id in ids:
                if set_review(sessions, feedback_id, status):  # type: ignore[arg-type]
                    typer.echo(f"{feedback_id}: {status}")
                else:
                    missing.append(feedback_id)
        if missing:
            typer.echo(
                f"no correction with id {', '.join(map(str, missing[:10]))}; "
                "list them with `chatforge feedback review` (the first column is the id).",
                err=True,
            )
            raise typer.Exit(code=1)
        return
    status = "held" if held else "pending"
    rows = list_corrections(sessions, statuses=[status])
    if not rows:
        typer.echo(f"no corrections {'flagged by the sensitive-word filter' if held else 'awaiting review'}", err=True)
        return
    typer.echo("id\tcompletion_id\trating\tcorrection")
    for row in rows:
        typer.echo(f"{row.id}\t{row.conversation_id}\t{row.rating:+d}\t{_preview(row.correction)}")
    typer.echo(f"{len(rows)} {status}; approve with `--approve ID`, reject with `--reject ID`", err=True)


# ---- issue 12: the conversation store (retention)
store_app = typer.Typer(help="The conversation store the service writes (serve.database_url).", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("purge")
def store_purge(
    older_than_days: Annotated[
        float | None, typer.Option("--older-than-days", help="Overrides serve.privacy.retention_days (days, > 0).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    database_url: DatabaseOpt = None,
) -> None:
    """Delete conversations (with their messages and feedback) older than the retention."""
    from chatforge.serving.store import open_store, purge_expired

    if older_than_days is not None and not older_than_days > 0:
        typer.echo(f"--older-than-days must be > 0 (got {older_than_days:g}); pass the age in days.", err=True)
        raise typer.Exit(code=2)
    serve_params = _serve_params(params, database_url)
    days = older_than_days if older_than_days is not None else serve_params.privacy.retention_days
    if days is None:
        typer.echo(
            "serve.privacy.retention_days is null (keep conversations forever): nothing deleted. "
            "Pass --older-than-days N to purge anyway.",
            err=True,
        )
        return
    n = purge_expired(open_store(serve_params.database_url), retention_days=days)
    typer.echo(f"deleted {n} conversation{'s' if n != 1 else ''} older than {days:g} days")


@ab_app.command("report")
def ab_report(
    params: ParamsOpt = Path("params.yaml"),
    database_url: DatabaseOpt = None,
    alpha: Annotated[float, typer.Option(min=0.0001, max=0.5, help="Significance level (both tests).")] = 0.05,
    new: Annotated[str | None, typer.Option("--new", help="The variant that may replace the baseline (the first "
                                            "variant); default: the last configured variant.")] = None,
    min_rated: Annotated[int, typer.Option("--min-rated", min=1, help="Rated answers each variant needs before "
                                           "deciding.")] = 100,
    margin: Annotated[float, typer.Option("--margin", min=0.0, max=0.5, help="Non-inferiority margin: how much lower "
                                          "(a difference of thumbs-up rates) the new variant may be.")] = 0.02,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table, tests and decision as JSON.")] = False,
) -> None:
    """Per-variant requests and satisfaction with 95% intervals, whether the difference is significant, and
    the decision: replace (the new variant's thumbs-up rate is not worse than the baseline's by --margin or
    more: one-sided non-inferiority z-test at --alpha), keep, or wait (fewer than --min-rated ratings)."""
    import json

    from chatforge.serving.ab import VariantStats, decide, format_decision, format_report, report_json
    from chatforge.serving.store import open_store, variant_feedback_counts

    serve_params = _serve_params(params, database_url)
    counts = {v: VariantStats(v, n, rated, pos) for v, n, rated, pos in variant_feedback_counts(open_store(serve_params.database_url))}
    # configured variants first, in params order (the first is the baseline), then any retired ones
    configured = [v.name for v in serve_params.variants]
    stats = [counts.get(v, VariantStats(v, 0, 0, 0)) for v in configured + sorted(set(counts) - set(configured))]
    # the default new variant is the last configured one (not a retired one listed after it); none when one is configured
    target = new or (configured[-1] if len(configured) > 1 else None)
    try:
        decision = decide(stats if target else stats[:1], new=target, min_rated=min_rated, margin=margin, alpha=alpha)
    except ValueError as exc:
        typer.echo(f"ab report: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps(report_json(stats, decision, alpha=alpha), indent=2, sort_keys=True))
        return
    typer.echo(format_report(stats, alpha=alpha))
    typer.echo(format_decision(decision))


# ---- issue 23: the promoted model (what is being served), kept across builds
@app.command("promote")
def promote_build(
    params: Annotated[Path, typer.Option("--params", envvar="CHATFORGE_PARAMS",
                                         help="params.yaml whose quantize.source names the float folder.")] = Path("params.yaml"),
    model: Annotated[Path | None, typer.Option("--model", help="The float torch folder the served INT8 was quantized "
                                                "from (default models/<quantize.source>).")] = None,
    onnx: Annotated[Path, typer.Option("--onnx", help="The served ONNX folder.")] = Path("models/onnx"),
    report: Annotated[Path, typer.Option("--report", help="The evaluate report that measured this build.")] = Path("reports/evaluate.json"),
    to: Annotated[Path, typer.Option("--to", help="The promoted folder, replaced as a whole.")] = Path("models/served"),
) -> None:
    """Keep the current build as the served model: copy the float model, the ONNX folder and the evaluate
    report into TO (models/served, outside DVC) with a promoted.json manifest, replacing what was promoted
    before. The next build continues from it (train.init_from: served), its forgetting gates compare with
    it, and TO/onnx stays servable as the previous variant of an A/B test."""
    from chatforge.params import ParamsError, load_section
    from chatforge.runtime.folder import ModelFolderError
    from chatforge.runtime.promoted import MANIFEST_NAME, promote

    try:
        source = model if model is not None else Path("models") / load_section("quantize", path=params).source
        done = promote(source, onnx, report, to)
    except (ParamsError, ModelFolderError) as exc:
        typer.echo(f"promote: {exc}", err=True)
        raise typer.Exit(code=2) from None
    m = done.manifest
    typer.echo(f"promoted {source} + {onnx} ({m.served_variant}: BLEU zh {m.bleu_zh:.2f} / en {m.bleu_en:.2f}, "
               f"slot carry {m.slot_carry:.4f}) to {done.root}:")
    for path, what in ((done.model, f"float model, sha256 {m.model_sha256[:12]}..."),
                       (done.onnx, f"ONNX, sha256 {m.onnx_sha256[:12]}..."), (done.report, f"copy of {report}"),
                       (done.root / MANIFEST_NAME, "manifest")):
        typer.echo(f"  {path}  ({what})")


# ---- issue 4: try the translator behind back-translation ----
@app.command("translate")
def translate(
    texts: Annotated[list[str], typer.Argument(help="Sentences to translate.")],
    src: Annotated[str, typer.Option(help="Source language: zh or en.")] = "zh",
    tgt: Annotated[str, typer.Option(help="Target language: zh or en.")] = "en",
    model: Annotated[str, typer.Option(help="Translator folder or hub id.")] = "models/translator",
    round_trip: Annotated[bool, typer.Option(help="Also translate back, as augment does.")] = False,
) -> None:
    """Translate TEXTS with the pipeline's translator (what back-translation sees)."""
    from chatforge.modeling.translate import TranslatorLoadError, load_translator

    if {src, tgt} != {"zh", "en"}:
        typer.echo("--src and --tgt must be zh and en (one each).", err=True)
        raise typer.Exit(2)
    try:
        translator = load_translator(model)
    except TranslatorLoadError as exc:
        typer.echo(f"{exc} (build the default with `dvc repro translator`)", err=True)
        raise typer.Exit(1) from None
    out = translator.translate(texts, src=src, tgt=tgt)  # type: ignore[arg-type]
    back = translator.translate(out, src=tgt, tgt=src) if round_trip else [None] * len(out)  # type: ignore[arg-type]
    for text, there, again in zip(texts, out, back, strict=True):
        typer.echo(f"{text}\t{there}" + (f"\t{again}" if again is not None else ""))


# ---- issue 14: look at your own data before it goes into ingest.sources ----
data_app = typer.Typer(help="Your own data: see what ingest would make of it.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="A data file or folder (e.g. under data/raw/).")],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="The ingest format; guessed when omitted.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Kept conversations to show.")] = 5,
    sample: Annotated[int, typer.Option(min=0, help="Records read at most (0 = the whole source).")] = 2000,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="A source option KEY=VALUE (repeatable), e.g. utterance_column=question.")
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml whose ingest section (min_turns, same_role) applies.")] = Path("params.yaml"),
) -> None:
    """See what ingest would make of PATH; writes nothing.

    Guesses the format (or takes --format), reads a sample exactly as the ingest stage would, and prints
    the conversations kept, the rejects with reasons, languages, intents and the `ingest.sources` entry to paste.
    """
    from chatforge.data.inspect import InspectError, inspect_source, parse_options, render
    from chatforge.params import IngestParams, ParamsError, load_section

    ingest_params = None
    if params.exists():
        try:
            ingest_params = load_section("ingest", path=params)
        except ParamsError as exc:
            typer.echo(f"warning: ingest defaults used, {params} does not validate: {str(exc).splitlines()[-1].strip()}", err=True)
    settings: dict = {}
    if isinstance(ingest_params, IngestParams):
        settings = {"same_role": ingest_params.same_role, "merge_separator": ingest_params.merge_separator,
                    "min_turns": ingest_params.min_turns, "taken_names": {s.source_name for s in ingest_params.sources}}
    try:
        report = inspect_source(path, fmt=fmt, options=parse_options(option or []), show=limit,
                                sample=sample or None, **settings)
    except InspectError as exc:
        typer.echo(f"data inspect: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(render(report))
    if report.problem():
        typer.echo(f"data inspect: {report.problem()}", err=True)
        raise typer.Exit(code=2)


# ---- issue 14: GGUF export for llama.cpp / Ollama ----
@app.command("export")
def export(
    model_dir: Annotated[Path, typer.Argument(help="A causal LM folder the pipeline built: models/teacher, models/student, models/pruned.")],
    out_dir: Annotated[Path, typer.Argument(help="Where <name>-<type>.gguf, Modelfile and README.md are written.")],
    gguf_types: Annotated[list[str] | None, typer.Option("--type", help="f16 | q8_0; repeat to write both (default q8_0).")] = None,
    name: Annotated[str | None, typer.Option(help="File and model name (default chatforge-<variant>).")] = None,
    persona: Annotated[str | None, typer.Option(help="Modelfile sampling + system prompt from serve.personas (default: greedy, as served without one).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    reports: Annotated[Path, typer.Option(help="Pipeline reports the model card summarises.")] = Path("reports"),
    below_retrieval: Annotated[bool, typer.Option("--allow-below-retrieval", help="Export even when the model alone (as llama.cpp runs it) answers worse than the retrieval baseline.")] = False,
) -> None:
    """Write MODEL_DIR as GGUF (chat template embedded), an Ollama Modelfile and a model card README.md into OUT_DIR.

    llama.cpp and Ollama run the model alone: without chatforge's slot placeholders and retrieval in
    the loop. When reports/evaluate.json shows the model alone below the retrieval baseline, the
    export refuses (exit 2) and says by how much, unless --allow-below-retrieval."""
    import re

    from chatforge.compress import gguf_export as gx
    from chatforge.io import write_text
    from chatforge.modeling import model_card as mc
    from chatforge.params import ServeLimits
    from chatforge.runtime.folder import ModelFolderError

    types = list(dict.fromkeys(t.lower() for t in (gguf_types or ["q8_0"])))
    if bad := [t for t in types if t not in gx.GGUF_TYPES]:
        typer.echo(f"--type {bad[0]!r} is not a GGUF type this exports; choose {' or '.join(gx.GGUF_TYPES)} (repeat --type for both).", err=True)
        raise typer.Exit(code=2)
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        typer.echo(f"--name {name!r}: use letters, digits, '_', '.' and '-' only (it becomes a file and Ollama model name).", err=True)
        raise typer.Exit(code=2)
    try:
        plan = gx.plan_export(model_dir)
    except (gx.GgufExportError, ModelFolderError) as exc:
        typer.echo(f"export: {exc}", err=True)
        raise typer.Exit(code=2) from None
    # without a params file: what `chatforge serve` does without a persona (greedy, default answer length)
    serve_params = _serve_params(params, None) if params.exists() else None
    personas, limits = (serve_params.personas, serve_params.limits) if serve_params else ({}, ServeLimits())
    chosen = None
    if persona is not None:
        chosen = personas.get(persona)
        if chosen is None:
            typer.echo(f"unknown persona {persona!r}; choose one of: {', '.join(sorted(personas)) or 'none configured'} ({params} serve.personas)", err=True)
            raise typer.Exit(code=2)
    name = name or f"chatforge-{plan.variant}"
    row = mc.evaluated_row(reports, plan.variant, model_dir)  # hashes the folder once
    losses = mc.standalone_below_retrieval(reports, row)
    if losses is None:
        typer.echo(f"warning: {reports}/evaluate.json has no scores for this {plan.variant!r} folder (its hash is not the one "
                   "evaluate measured, or the variant or the retrieval baseline is missing): how the exported model "
                   "answers on its own is not measured (run `dvc repro evaluate`).", err=True)
    elif losses and not below_retrieval:
        typer.echo(f"export: {model_dir} answers worse on its own than the retrieval baseline ({'; '.join(losses)}; "
                   f"{reports}/evaluate.json). llama.cpp and Ollama run the model alone: `chatforge serve` adds slot "
                   "placeholders and retrieval in the loop, which they cannot. Serve it with `chatforge serve`, build a "
                   "stronger model (README, \"Choosing a base\"), or pass --allow-below-retrieval to export anyway.", err=True)
        raise typer.Exit(code=2)
    _, license_id = mc.base_model_and_license(plan.base)
    written = []
    for gguf_type in types:
        target = out_dir / gx.gguf_file_name(name, gguf_type)  # type: ignore[arg-type]
        try:
            written.append(gx.export_gguf(model_dir, target, gguf_type=gguf_type, name=name, license_id=license_id,  # type: ignore[arg-type]
                                       tags=("chatforge", plan.variant)))
        except (gx.GgufExportError, ModelFolderError) as exc:
            typer.echo(f"export: {exc}", err=True)
            raise typer.Exit(code=2) from None
        kept = f", {len(written[-1].f16_fallback)} tensors kept F16" if written[-1].f16_fallback else ""
        typer.echo(f"wrote {target} ({gguf_type}, {written[-1].size_bytes / 1e6:.1f} MB{kept})")
    main_file = next((w for w in written if w.gguf_type == "q8_0"), written[0])
    options = gx.ModelfileOptions(
        temperature=chosen.temperature if chosen else 0.0, top_p=chosen.top_p if chosen else 1.0,
        num_predict=limits.default_max_tokens, num_ctx=int(plan.config.get("max_position_embeddings") or 0) or None,
        system=(chosen.system_prompt if chosen and chosen.system_prompt else plan.default_system),
    )
    write_text(gx.ollama_modelfile(main_file.path.name, template=plan.template, stops=plan.stops, options=options,
                                alternatives=tuple(w.path.name for w in written if w is not main_file)), out_dir / "Modelfile")
    card = mc.CardInputs(
        name=name, variant=plan.variant, base=plan.base, parent=plan.parent, parameters=main_file.parameters,
        layers=int(plan.config.get("num_hidden_layers", 0)), hidden=int(plan.config.get("hidden_size", 0)),
        context_tokens=int(plan.config.get("max_position_embeddings", 0)),
        files=[mc.CardFile(w.path.name, w.gguf_type, w.size_bytes) for w in written],
        training=mc.training_summary(reports), metrics=mc.variant_metrics(row),
        slot_placeholders=plan.slot_placeholders,
    )
    write_text(mc.render_model_card(card), out_dir / "README.md")
    typer.echo(f"wrote {out_dir / 'Modelfile'} and {out_dir / 'README.md'}; run `ollama create {name} -f {out_dir / 'Modelfile'}`")
    if plan.slot_placeholders:
        m = card.metrics
        measured = (f": on the test split BLEU {m['raw_bleu_zh']:.1f} zh / {m['raw_bleu_en']:.1f} en, slot carry "
                    f"{m['raw_slot_carry']:.2f} (served: {m['bleu_zh']:.1f} / {m['bleu_en']:.1f}, {m['slot_carry']:.2f})"
                    if all(k in m for k in ("raw_bleu_zh", "raw_bleu_en", "raw_slot_carry", "bleu_zh", "bleu_en", "slot_carry"))
                    else "")
        typer.echo(f"warning: {model_dir} was trained with slot placeholders, which llama.cpp and Ollama do not "
                   f"apply, so there it answers worse{measured}. `chatforge serve` applies them; "
                   "`model.slots.enabled: false` builds a model without them (README.md, Limitations).", err=True)


if __name__ == "__main__":
    app()

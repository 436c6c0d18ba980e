"""Command line: ``gateway serve | demo | check | schema | sim`` (also ``python -m gateway``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

from .errors import ProfileError
from .profiles import Backend, ProfileFile, ProfileSet, load_profiles, parse_profiles
from .settings import Settings
from .tokens import TokenizerCache

# Served by ``gateway demo`` when no profile file is at hand: the shipped R1-Distill profile.
DEMO_PROFILES = """
timeouts: {connect: 5, first_token: 60, idle: 15, total: 600}
models:
  deepseek-r1-distill-qwen-1.5b:
    upstream_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    backends: [{url: "http://127.0.0.1:8000"}]
    stop_token_ids: [151643]
    defaults: {temperature: 0.6, top_p: 0.95, max_tokens: 32768}
    prompt: {leading_newline: true, system: merge}
    stop_text: ["<｜end▁of▁sentence｜>"]
    reasoning: {parser: think_tags, starts_in_reasoning: true}
"""


def _load_or_exit(path: str, tokenizers: TokenizerCache) -> ProfileSet:
    try:
        return load_profiles(path, tokenizers.resolve)
    except ProfileError as exc:
        print(f"gateway: invalid profile file {path}:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(settings: Settings, profiles: ProfileSet, tokenizers: TokenizerCache) -> None:
    import uvicorn

    from .app import create_app
    from .server import config

    uvicorn.Server(config(create_app(settings, profiles, tokenizers), settings)).run()


def cmd_serve(args: argparse.Namespace) -> None:
    settings = Settings.from_env(host=args.host, port=args.port, config=args.config)
    tokenizers = TokenizerCache()
    profiles = _load_or_exit(settings.config, tokenizers)  # refuse a bad file before starting
    workers = args.workers or int(os.environ.get("GATEWAY_WORKERS", "1"))
    if workers <= 1:
        _run(settings, profiles, tokenizers)
        return
    _run_workers(settings, workers)


def _run_workers(settings: Settings, workers: int) -> None:
    """Several uvicorn worker processes; metrics merged through prometheus-client's
    multiprocess mode (one directory shared by the workers, emptied at start)."""
    import uvicorn

    from .server import uvicorn_options

    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    cleanup = None
    if not metrics_dir:
        cleanup = tempfile.TemporaryDirectory(prefix="gateway-metrics-")
        metrics_dir = cleanup.name
    else:
        # Created if missing: a fresh emptyDir or tmpfs (the Kubernetes Deployment's /tmp) has
        # no such directory, and prometheus-client would fail in every worker.
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(metrics_dir).glob("*.db"):
            stale.unlink()
    # The workers are fresh interpreters: they read everything from the environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["GATEWAY_CONFIG"] = settings.config
    try:
        uvicorn.run(
            "gateway.app:app_from_env", factory=True, workers=workers, **uvicorn_options(settings)
        )
    finally:
        if cleanup is not None:
            cleanup.cleanup()


def cmd_check(args: argparse.Namespace) -> None:
    """Validate and resolve a profile file; print the effective profiles."""
    profiles = _load_or_exit(args.config, TokenizerCache())
    print(json.dumps(profiles.describe(), indent=2, ensure_ascii=False))
    print(f"ok: {len(profiles.models)} model(s), version {profiles.version}", file=sys.stderr)


def cmd_schema(args: argparse.Namespace) -> None:
    """JSON Schema of the profile file, for editors (yaml-language-server)."""
    schema = ProfileFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gateway model profiles"
    print(json.dumps(schema, indent=2, ensure_ascii=False))


def cmd_demo(args: argparse.Namespace) -> None:
    """The gateway and a simulated vLLM backend in one process, on loopback."""
    import uvicorn

    from .app import create_app
    from .server import config as server_config
    from .sim import SimVLLM, start_sim

    config = args.config or os.environ.get("GATEWAY_CONFIG")
    if config is None and Path("model_profiles.yaml").is_file():
        config = "model_profiles.yaml"
    tokenizers = TokenizerCache()
    profiles = (
        _load_or_exit(config, tokenizers) if config else parse_profiles(DEMO_PROFILES, "<demo>")
    )
    # "<demo>": the demo's backends are rewritten, so it must never reload the real file
    settings = Settings.from_env(host=args.host, port=args.port, config="<demo>")

    async def main() -> None:
        served = sorted({p.upstream_model for p in profiles.models.values()})
        sim = SimVLLM(served, token_delay=args.token_delay)
        runner, sim_port = await start_sim(sim)
        backend = Backend(name="simulated-vllm", url=f"http://127.0.0.1:{sim_port}")
        demo = dataclasses.replace(
            profiles,
            models={
                name: dataclasses.replace(p, backends=(backend,))
                for name, p in profiles.models.items()
            },
        )
        print(
            f"simulated vLLM on {backend.url}; gateway on http://{settings.host}:{settings.port}/v1"
        )
        print(f"models: {', '.join(demo.models)}")
        try:
            await uvicorn.Server(server_config(create_app(settings, demo), settings)).serve()
        finally:
            await runner.cleanup()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # the simulator owns its whole command line
        from .sim import main as sim_main

        return sim_main(argv[1:])
    from .logs import configure

    configure(os.environ.get("GATEWAY_LOG_LEVEL", "info"))
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the profiles in front of vLLM")
    serve.add_argument(
        "--config",
        default=None,
        help="profile file (default $GATEWAY_CONFIG or model_profiles.yaml)",
    )
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--workers", type=int, default=None, help="worker processes (default $GATEWAY_WORKERS or 1)"
    )
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="gateway + simulated vLLM backend, no GPU needed")
    demo.add_argument("--config", default=None)
    demo.add_argument("--host", default=None)
    demo.add_argument("--port", type=int, default=None)
    demo.add_argument(
        "--token-delay", type=float, default=0.03, help="seconds between simulated tokens"
    )
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check", help="validate a profile file, print the effective profiles")
    check.add_argument("config", help="profile file")
    check.set_defaults(func=cmd_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the profile file")
    schema.set_defaults(func=cmd_schema)

    sub.add_parser("sim", help="run only the simulated vLLM server (gateway sim --help)")

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

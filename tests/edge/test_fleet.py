"""`llama-edge bench --boards`: the same benchmark on several boards, as one table.

The boards are test hosts made here: OpenSSH servers on loopback (one per board, each with its
own keys and work folder). One board runs the aarch64 build under qemu-user (Cortex-A76); one is
killed once its first benchmark has started, and must give failure rows while the others
finish. Records are checked against the schema (edge.bench.RECORD_FIELDS); nothing here checks a
speed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.bench import RECORD_FIELDS, artifact_digest, format_rows, record_problems
from edge.errors import EdgeError
from edge.fleet import Board, Spec, failure_row, load_boards, merge_rounds, run_fleet
from support.artifacts import write

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
SSH_PACKAGES = "openssh-server"  # scripts/setup.sh installs it
START_TIMEOUT = 20.0
KILL_WAIT = 600.0  # seconds the killer waits for the doomed board's first run
ROUNDS = 2
BASE_ARGS = ["-p", "4,8", "-n", "2", "-d", "0,4", "-r", str(ROUNDS), "--warmup", "0",
             "--ctx", "32"]
TESTS = 6  # per model: pp4, pp8 and tg2, at depths 0 and 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out += [child, *_children(child)]
    return out


def _kill_tree(pid: int) -> None:
    for p in [pid, *_children(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class SshHost:
    """An sshd on 127.0.0.1 accepting one client key, with SFTP."""

    def __init__(self, root: Path, client_pub: Path):
        self.root = root
        root.mkdir(parents=True)
        self.port = _free_port()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(root / "host_key")], check=True)
        shutil.copy(client_pub, root / "authorized_keys")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root}/host_key\n"
            f"PidFile {root}/sshd.pid\nAuthorizedKeysFile {root}/authorized_keys\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\n"
            "UsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                                     stderr=open(root / "sshd.log", "wb"))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()}")
                time.sleep(0.1)

    def kill(self) -> None:
        _kill_tree(self.proc.pid)
        self.proc.wait()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if shutil.which(SSHD) is None or shutil.which("ssh-keygen") is None:
        msg = f"{SSHD} not found: install {SSH_PACKAGES}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    if os.geteuid() != 0:
        pytest.skip("the test boards' sshd runs as root here")
    root = tmp_path_factory.mktemp("boards")
    key = root / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    made = [SshHost(root / f"host{i}", key.with_suffix(".pub")) for i in range(3)]
    yield root, key, made
    for h in made:
        if h.proc.poll() is None:
            h.kill()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet-models")
    return [write(d / "tiny-a", seed=0, max_context=64), write(d / "tiny-b", seed=1, max_context=64)]


def _boards_toml(root: Path, key: Path, hosts, arm64: Path, doomed_flag: Path) -> Path:
    host_cmd = f"{sys.executable} -m edge.cli"
    # the doomed board announces its first run, then runs as the first board does
    wrapper = root / "doomed.sh"
    wrapper.write_text(f"#!/bin/sh\ntouch {doomed_flag}\nexec {host_cmd} \"$@\"\n")
    wrapper.chmod(0o755)
    user = os.environ.get("USER") or "root"
    common = (f'transport = "ssh"\nhost = "127.0.0.1"\nuser = "{user}"\nkey = "{key}"\n'
              'known_hosts = "none"\nthreads = 1\n')
    text = '[defaults]\ntimeout = 900\n\n'
    text += (f'[[board]]\nname = "x86-a"\nport = {hosts[0].port}\n{common}'
             f'command = "{host_cmd}"\nworkdir = "{root}/work0"\n\n')
    text += (f'[[board]]\nname = "qemu-a76"\nport = {hosts[1].port}\n{common}'
             f'command = "{arm64 / "llama-edge"}"\nworkdir = "{root}/work1"\n'
             'env = { QEMU_CPU = "cortex-a76" }\n\n')
    text += (f'[[board]]\nname = "doomed"\nport = {hosts[2].port}\n{common}'
             f'command = "{wrapper}"\nworkdir = "{root}/work2"\n')
    path = root / "boards.toml"
    path.write_text(text)
    return path


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_ISA", "QEMU_CPU")}
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True,
                          text=True, env=env, timeout=3600)


@pytest.fixture(scope="module")
def fleet_run(hosts, models, arm64, tmp_path_factory):
    root, key, made = hosts
    flag = root / "doomed-started"
    boards = _boards_toml(root, key, made, arm64, flag)
    plots = tmp_path_factory.mktemp("plots")

    def killer():
        deadline = time.monotonic() + KILL_WAIT
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        made[2].kill()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    r = _cli(["bench", "--boards", str(boards), "-m", str(models[0]), "-m", str(models[1]),
              *BASE_ARGS, "-o", "jsonl", "--plots", str(plots)])
    t.join(5)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return boards, rows, plots, r.stderr


def test_every_board_gives_every_record(fleet_run, models):
    _, rows, _, _ = fleet_run
    assert len(rows) == 3 * len(models) * TESTS
    assert [r["board"] for r in rows] == (["x86-a"] * 12 + ["qemu-a76"] * 12 + ["doomed"] * 12)
    for r in rows:
        assert not record_problems(r), (r["board"], record_problems(r))
        assert r["transport"] == "ssh"
    tests = {(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in rows}
    assert tests == {(4, 0, 0), (8, 0, 0), (0, 2, 0), (4, 0, 4), (8, 0, 4), (0, 2, 4)}


def test_rounds_merge_on_the_boards_that_finished(fleet_run, models):
    _, rows, _, _ = fleet_run
    for r in rows:
        if r["board"] == "doomed":
            continue
        assert r["status"] == "ok", r
        assert r["rounds"] == ROUNDS and len(r["samples_ns"]) == ROUNDS
        assert r["model_filename"] in {str(m) for m in models}
        assert r["artifact_pushed"] is True
    arm = [r for r in rows if r["board"] == "qemu-a76"]
    assert all(r["emulated"] and r["isa"] == "neon-dotprod" and "asimddp" in r["cpu_features"]
               for r in arm)
    x86 = [r for r in rows if r["board"] == "x86-a"]
    assert all(not r["emulated"] and r["n_threads"] == 1 for r in x86)


def test_a_board_killed_mid_run_gives_failure_rows(fleet_run):
    _, rows, _, log = fleet_run
    doomed = [r for r in rows if r["board"] == "doomed"]
    assert doomed and all(r["status"] == "failed" for r in doomed)
    assert all("board doomed:" in r["error"] and "rounds)" in r["error"] for r in doomed)
    assert "board doomed:" in log


def test_plots_are_written(fleet_run):
    _, _, plots, log = fleet_run
    for name in ("depth.png", "prompt.png", "boards.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"plot: {plots / name}" in log


def test_second_run_skips_the_push(fleet_run, models, hosts):
    boards, _, _, _ = fleet_run
    kept = load_boards(boards)[:2]  # the doomed board's server is gone
    rows = run_fleet(kept, [str(models[0])], Spec(n_prompt=(4,), n_gen=(0,), depths=(0,),
                                                  repeat=1, warmup=0, ctx=32))
    assert [r["board"] for r in rows] == ["x86-a", "qemu-a76"]
    assert all(r["status"] == "ok" and r["artifact_pushed"] is False for r in rows)
    root = hosts[0]
    digest = rows[0]["artifact_sha256"]
    held = root / "work0" / digest[:16]
    assert (held / ".llama-edge-sha256").read_text().strip() == digest
    assert (held / "tiny-a" / "manifest.json").is_file()
    assert not list((root / "work0").glob("*.partial-*"))


def test_md_and_pytorch_outputs_of_merged_rows(fleet_run):
    _, rows, _, _ = fleet_run
    md = format_rows(rows, "md").splitlines()
    assert len(md) == 2 + len(rows)
    assert sum("failed: board doomed" in line for line in md) == 12
    recs = json.loads(format_rows(rows, "pytorch"))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(recs) == 3 * len(ok)
    assert {rec["runners"][0]["name"] for rec in recs} == {"x86-a", "qemu-a76"}


# ------------------------------------------------------------------------------ over ADB
@pytest.fixture
def adbd():
    from support.fake_adbd import FakeAdbd

    d = FakeAdbd()
    yield d
    d.stop()


def test_adb_board_pushes_runs_and_skips_the_second_push(adbd, models, tmp_path):
    board = Board(name="phone", transport="adb", host="127.0.0.1", port=adbd.port,
                  command=f"{sys.executable} -m edge.cli", workdir=str(tmp_path / "dev"),
                  env={"EDGE_BOARD_TEST": "1"}, threads=1)
    spec = Spec(n_prompt=(4,), n_gen=(2,), repeat=2, warmup=0, ctx=32)
    rows = run_fleet([board], [str(m) for m in models], spec)
    assert len(rows) == 4
    for r in rows:
        assert r["status"] == "ok" and r["transport"] == "adb" and r["board"] == "phone", r
        assert r["rounds"] == 2 and r["artifact_pushed"] is True and not record_problems(r)
    runs = [c for c in adbd.commands if " bench " in c]
    assert len(runs) == 4 and all(c.startswith("env EDGE_BOARD_TEST=1 ") for c in runs)
    # models alternate within each round
    assert ["tiny-a" in c for c in runs] == [True, False, True, False]
    digest = rows[0]["artifact_sha256"]
    held = tmp_path / "dev" / digest[:16]
    assert (held / ".llama-edge-sha256").read_text().strip() == digest
    assert sorted(p.name for p in (held / "tiny-a").iterdir()) == sorted(
        p.name for p in models[0].iterdir())
    again = run_fleet([board], [str(models[0])], Spec(n_prompt=(4,), n_gen=(0,), repeat=1,
                                                      warmup=0, ctx=32))
    assert again[0]["status"] == "ok" and again[0]["artifact_pushed"] is False


def test_adb_phone_without_python_runs_the_static_program(adbd, arm64, models, tmp_path):
    """An Android-like device: no Python, the statically linked aarch64 bench program pushed
    with bench bundles of the artifacts, run under qemu-user (Cortex-A76) by the device."""
    board = Board(name="phone", transport="adb", host="127.0.0.1", port=adbd.port,
                  command="qemu-aarch64 -cpu cortex-a76", runtime="static",
                  binary=str(arm64 / "llama-edge-bench"), workdir=str(tmp_path / "dev"),
                  threads=1)
    rows = run_fleet([board], [str(m) for m in models],
                     Spec(n_prompt=(4,), n_gen=(2,), repeat=2, warmup=0, ctx=32))
    assert len(rows) == 4
    for r, m in zip(rows, [models[0]] * 2 + [models[1]] * 2):
        assert r["status"] == "ok" and not record_problems(r), r
        assert r["isa"] == "neon-dotprod" and r["emulated"] is True and r["rounds"] == 2
        assert r["artifact_sha256"] == artifact_digest(str(m))  # the bundle names its artifact
    runs = [c for c in adbd.commands if "llama-edge-bench" in c and " -m " in c]
    assert len(runs) == 4 and all(".lebench" in c and " bench " not in c for c in runs)


def test_adb_device_gone_gives_failure_rows(adbd, models, tmp_path):
    adbd.stop()
    board = Board(name="phone", transport="adb", host="127.0.0.1", port=adbd.port,
                  workdir=str(tmp_path))
    rows = run_fleet([board], [str(models[0])], Spec(n_prompt=(4,), n_gen=(0,), repeat=1))
    assert rows[0]["status"] == "failed" and "cannot connect to adb device" in rows[0]["error"]
    assert not record_problems(rows[0])


# ------------------------------------------------------------------ without boards (no sshd)
def test_unreachable_board_gives_failure_rows(models, tmp_path):
    board = Board(name="gone", host="127.0.0.1", port=_free_port(), user="nobody",
                  known_hosts="none", workdir=str(tmp_path))
    rows = run_fleet([board], [str(models[0])], Spec(n_prompt=(4,), n_gen=(2,), repeat=1))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("cannot connect" in r["error"] and not record_problems(r) for r in rows)


def test_board_whose_runtime_is_missing_gives_failure_rows(models, tmp_path):
    board = Board(name="bare", transport="local", command="/nonexistent/llama-edge",
                  workdir=str(tmp_path / "w"))
    rows = run_fleet([board], [str(models[0])], Spec(n_prompt=(4,), n_gen=(0,), repeat=1))
    assert rows[0]["status"] == "failed" and "cannot run /nonexistent/llama-edge" in rows[0]["error"]


def test_local_board_runs_and_merges(models, tmp_path):
    board = Board(name="here", transport="local", command=f"{sys.executable} -m edge.cli",
                  workdir=str(tmp_path / "w"), threads=1)
    rows = run_fleet([board], [str(m) for m in models],
                     Spec(n_prompt=(4,), n_gen=(2,), repeat=3, warmup=0, ctx=32))
    assert len(rows) == 4 and all(r["status"] == "ok" and r["rounds"] == 3 for r in rows)
    assert all(len(r["samples_ts"]) == 3 and not record_problems(r) for r in rows)


def test_lab_tool_acquires_and_releases_the_board(models, tmp_path):
    log = tmp_path / "lab.log"
    tool = tmp_path / "lab-tool"
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n[ \"$2\" != busy ]\n")
    tool.chmod(0o755)
    ok = Board(name="here", transport="local", command=f"{sys.executable} -m edge.cli",
               workdir=str(tmp_path / "w"), threads=1, acquire=f"{tool} acquire free",
               release=f"{tool} release free")
    busy = Board(name="taken", transport="local", command=f"{sys.executable} -m edge.cli",
                 workdir=str(tmp_path / "w"), acquire=f"{tool} acquire busy",
                 release=f"{tool} release busy")
    rows = run_fleet([ok, busy], [str(models[0])], Spec(n_prompt=(4,), n_gen=(0,), repeat=1,
                                                        warmup=0, ctx=32))
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "failed" and "acquire" in rows[1]["error"]
    lines = log.read_text().splitlines()
    assert "acquire free" in lines and "release free" in lines and "acquire busy" in lines
    assert "release busy" not in lines  # never acquired: nothing to release
    assert lines.index("acquire free") < lines.index("release free")


def test_merge_rounds_pools_samples():
    base = {"n_prompt": 0, "n_gen": 4, "status": "ok", "ttft_s": 0.1, "load_s": 1.0,
            "peak_rss_mb": 10.0}
    rounds = [dict(base, samples_ns=[1_000_000_000]), dict(base, samples_ns=[2_000_000_000],
                                                           ttft_s=0.3, peak_rss_mb=12.0)]
    m = merge_rounds(rounds)
    assert m["samples_ns"] == [1_000_000_000, 2_000_000_000] and m["samples_ts"] == [4.0, 2.0]
    assert m["avg_ts"] == 3.0 and m["peak_rss_mb"] == 12.0 and m["ttft_s"] == 0.2
    failed = merge_rounds([rounds[0], dict(base, status="failed", error="past the context")])
    assert failed["status"] == "failed" and failed["error"] == "past the context"


def test_failure_row_has_every_field(models):
    r = failure_row(Board(name="b", host="h"), models[0], "ab" * 32, (0, 2, 0), "why")
    assert set(RECORD_FIELDS) <= set(r) and not record_problems(r)
    assert "error: a failed record must say why" in record_problems(dict(r, error=None))
    assert record_problems(dict(r, n_gen="2"))  # a wrong type is reported


@pytest.mark.parametrize("text, message", [
    ("", "no [[board]] listed"),
    ("[[board]]\nhost = 'h'\n", "needs a name"),
    ("[[board]]\nname = 'a'\nhost = 'h'\n[[board]]\nname = 'a'\nhost = 'h'\n", "used twice"),
    ("[[board]]\nname = 'a'\n", "an ssh board needs a host"),
    ("[[board]]\nname = 'a'\nhost = 'h'\nport = '22'\n", "field 'port' has str"),
    ("[[board]]\nname = 'a'\nhost = 'h'\nspeed = 1\n", "unknown field 'speed'"),
    ("[[board]]\nname = 'a'\ntransport = 'telnet'\n", "transport 'telnet'"),
    ("[[board]]\nname = 'a'\nhost = 'h'\nenv = { X = 1 }\n", "env values must be strings"),
    ("[[board]]\nname = 'a'\nhost = 'h'\ncommand = ''\n", "command is empty"),
    ("[[board]]\nname = 'a'\nhost = 'h'\nruntime = 'java'\n", "runtime 'java'"),
    ("[[board]]\nname = 'a'\nhost = 'h'\nruntime = 'static'\n", "needs `binary`"),
    ("[[board]]\nname = 'a'\nhost = 'h'\nruntime = 'static'\nbinary = '/nonexistent/b'\n",
     "binary /nonexistent/b not found"),
    ("[[boards]]\nname = 'a'\n", "unknown table"),
    ("[[board]\n", "not valid TOML"),
])
def test_bad_boards_file_is_refused_with_the_field(tmp_path, text, message):
    p = tmp_path / "boards.toml"
    p.write_text(text)
    with pytest.raises(EdgeError, match=message.replace("[", r"\[")) as e:
        load_boards(p)
    assert str(p) in str(e.value)


def test_cli_refuses_per_board_options_with_boards(tmp_path, models):
    p = tmp_path / "boards.toml"
    p.write_text("[[board]]\nname = 'a'\ntransport = 'local'\n")
    r = _cli(["bench", "--boards", str(p), "-m", str(models[0]), "-t", "2"])
    assert r.returncode != 0 and "--threads is set per board" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli(["bench", "--boards", str(p), "-m", str(models[0]), "--engine", "torch"])
    assert r.returncode != 0 and "do not apply with --boards" in r.stderr

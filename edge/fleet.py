"""The same benchmark on a fleet of boards, as one table.

Boards are listed in a TOML file (see README "Benchmarks on boards"):

    [defaults]                      # any board field, for every board
    workdir = "/tmp/llama-edge"     # where artifacts are pushed on the board
    command = "llama-edge"          # the runtime on the board (argv, split like a shell)

    [[board]]
    name = "rock5b"
    transport = "ssh"               # ssh | adb | local
    host = "10.0.0.21"
    user = "bench"
    key = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts"   # "none": accept any host key (closed lab networks)
    cpu_mask = "0xf0"               # the big cores
    threads = 4
    env = { QEMU_CPU = "cortex-a76" }

    [[board]]
    name = "phone"
    transport = "adb"               # adbd over TCP (`adb tcpip 5555` once over USB)
    host = "10.0.0.40"
    port = 5555
    key = "~/.android/adbkey"       # the host's adb key the phone has authorized
    workdir = "/data/local/tmp/llama-edge"
    runtime = "static"              # no Python on the phone: the standalone bench program,
    binary = "build/arm64/bin/llama-edge-bench"   # pushed from here (relative to this file;
                                                  # scripts/setup_arm64.sh builds it)

A board's runtime is `llama-edge` (runtime = "python", the default: `command` runs it) or the
standalone program llama-edge-bench (runtime = "static": pushed from `binary`, fed bench bundles
made here from the artifacts (edge.bench_bundle); `command`, if any, prefixes it, e.g.
"taskset f0"). Both run the same kernels and write the same records.

Boards shared through a lab tool are reserved around the job: `acquire` runs here before the
board is reached and `release` after (also when the job failed), e.g. labgrid's
`labgrid-client -p PLACE acquire` / `release`; a failed acquire gives failure rows.

Every board runs in parallel, one job at a time on each board. An artifact is pushed once per
board into workdir/<sha256 prefix>/ (written beside, then renamed; skipped when the board already
holds that digest). The benchmark runs in rounds: each round runs every model once (`bench -r 1`
on the board, a fresh process), models alternating, so slow drift (heat, other load) spreads
over all of them; a model's samples of all rounds make its record. A board that cannot be
reached, drops the connection or fails a run gives failure rows (status "failed", the reason in
"error") for its tests; the other boards finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import statistics
import tempfile
import tomllib
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import sha256_file
from .bench import RECORD_FIELDS, _stats, artifact_digest
from .errors import EdgeError

TRANSPORTS = ("ssh", "adb", "local")
DEFAULT_PORTS = {"ssh": 22, "adb": 5555}
DEFAULT_WORKDIR = "/tmp/llama-edge"
DEFAULT_COMMAND = "llama-edge"
DEFAULT_TIMEOUT = 3600.0  # seconds per run on a board
CONNECT_TIMEOUT = 30.0
MARKER = ".llama-edge-sha256"  # written last into a pushed artifact's folder


@dataclass
class Board:
    name: str
    transport: str = "ssh"
    host: str | None = None
    port: int | None = None  # the transport's usual port when not given
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None  # None: the user's ~/.ssh/known_hosts; "none": not checked
    command: str | None = None  # python: the runtime (default llama-edge); static: a prefix
    workdir: str = DEFAULT_WORKDIR
    env: dict = field(default_factory=dict)
    threads: int | None = None
    cpu_mask: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    runtime: str = "python"  # or "static": llama-edge-bench, pushed from `binary`
    binary: str | None = None
    acquire: str | None = None  # run here before the job (a lab tool's reservation)
    release: str | None = None  # run here after it, whatever happened

    def __post_init__(self):
        if self.port is None:
            self.port = DEFAULT_PORTS.get(self.transport)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command or "")

    def remote_command(self, argv: list[str]) -> str:
        """argv as one shell command on the board, with the board's environment."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return shlex.join((["env", *env] if env else []) + argv)


_FIELD_TYPES = {"name": str, "transport": str, "host": str, "port": int, "user": str, "key": str,
                "known_hosts": str, "command": str, "workdir": str, "env": dict, "threads": int,
                "cpu_mask": str, "timeout": (int, float), "runtime": str, "binary": str,
                "acquire": str, "release": str}
RUNTIMES = ("python", "static")


def load_boards(path) -> list[Board]:
    """The boards of a boards.toml; a bad file names the board and field at fault."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise EdgeError(f"{p}: cannot read the boards file ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EdgeError(f"{p}: not valid TOML ({e})") from None
    unknown = set(doc) - {"defaults", "board"}
    if unknown:
        raise EdgeError(f"{p}: unknown table(s) {sorted(unknown)}: use [defaults] and "
                        "[[board]]")
    defaults = doc.get("defaults", {})
    entries = doc.get("board", [])
    if not isinstance(defaults, dict) or not isinstance(entries, list):
        raise EdgeError(f"{p}: [defaults] must be a table and [[board]] an array of tables")
    if not entries:
        raise EdgeError(f"{p}: no [[board]] listed")
    boards, names = [], set()
    for i, entry in enumerate(entries):
        where = f"{p}: board {i + 1}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict)
                                         and "name" in entry else "")
        if not isinstance(entry, dict):
            raise EdgeError(f"{where}: must be a table")
        merged = {**defaults, **entry}
        for key, value in merged.items():
            want = _FIELD_TYPES.get(key)
            if want is None:
                raise EdgeError(f"{where}: unknown field {key!r} (fields: "
                                f"{', '.join(_FIELD_TYPES)})")
            if not isinstance(value, want) or isinstance(value, bool):
                raise EdgeError(f"{where}: field {key!r} has {type(value).__name__} "
                                f"{value!r}, expected {getattr(want, '__name__', 'a number')}")
        if "name" not in merged or not merged["name"]:
            raise EdgeError(f"{where}: needs a name")
        if merged["name"] in names:
            raise EdgeError(f"{where}: the name {merged['name']!r} is used twice")
        names.add(merged["name"])
        b = Board(**merged)
        if b.transport not in TRANSPORTS:
            raise EdgeError(f"{where}: transport {b.transport!r}: choose one of "
                            f"{', '.join(TRANSPORTS)}")
        if b.transport in DEFAULT_PORTS and not b.host:
            raise EdgeError(f"{where}: an {b.transport} board needs a host")
        if b.runtime not in RUNTIMES:
            raise EdgeError(f"{where}: runtime {b.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if b.runtime == "python":
            if b.command is None:
                b.command = DEFAULT_COMMAND
            if not b.argv:
                raise EdgeError(f"{where}: command is empty")
        else:
            if not b.binary:
                raise EdgeError(f"{where}: a static board needs `binary`, the llama-edge-bench "
                                "program to push (scripts/setup_arm64.sh builds it)")
            # a relative path is relative to the boards file
            b.binary = str(p.parent / Path(b.binary).expanduser())
            if not Path(b.binary).is_file():
                raise EdgeError(f"{where}: binary {b.binary} not found (scripts/setup_arm64.sh "
                                "builds build/arm64/bin/llama-edge-bench)")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in b.env.items()):
            raise EdgeError(f"{where}: env values must be strings")
        if b.threads is not None and b.threads < 1:
            raise EdgeError(f"{where}: threads must be >= 1")
        if b.timeout <= 0:
            raise EdgeError(f"{where}: timeout must be > 0 seconds")
        boards.append(b)
    return boards


# ------------------------------------------------------------------------------- transports
class BoardError(Exception):
    """A board failed (unreachable, disconnected, a run that failed): its rows say why."""


class LocalTransport:
    """This machine as a board (files copied into workdir, runs as subprocesses)."""

    name = "local"

    def __init__(self, board: Board):
        self.board = board

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        return await _subprocess(argv, timeout, {**os.environ, **self.board.env})

    async def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    async def put(self, local: Path, remote: str) -> None:
        dest = Path(remote)
        if local.is_dir():
            shutil.copytree(local, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, dest)

    async def write_text(self, path: str, text: str) -> None:
        Path(path).write_text(text)


class SshTransport:
    """A board reached over SSH (asyncssh): commands in the board's shell, files over SFTP."""

    name = "ssh"

    def __init__(self, board: Board):
        self.board = board
        self.conn = None
        self.sftp = None

    async def __aenter__(self):
        with warnings.catch_warnings():  # the library's import warns about DSA keys
            warnings.simplefilter("ignore")
            import asyncssh
        b = self.board
        kwargs = {"port": b.port, "username": b.user,
                  "connect_timeout": CONNECT_TIMEOUT}
        if b.key:
            kwargs["client_keys"] = [os.path.expanduser(b.key)]
        if b.known_hosts == "none":
            kwargs["known_hosts"] = None
        elif b.known_hosts:
            kwargs["known_hosts"] = os.path.expanduser(b.known_hosts)
        try:
            self.conn = await asyncssh.connect(b.host, **kwargs)
            self.sftp = await self.conn.start_sftp_client()
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
            raise BoardError(f"cannot connect to {b.user + '@' if b.user else ''}{b.host}:"
                             f"{b.port} ({type(e).__name__}: {e})") from None
        return self

    async def __aexit__(self, *exc):
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(Exception):
                await self.conn.wait_closed()
        return False

    async def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        import asyncssh

        try:
            r = await asyncio.wait_for(self.conn.run(self.board.remote_command(argv), check=False), timeout)
        except asyncio.TimeoutError:
            raise BoardError(f"no answer within {timeout:g} s: {shlex.join(argv)}") from None
        except (OSError, asyncssh.Error) as e:
            raise BoardError(f"connection lost ({type(e).__name__}: {e})") from None
        if r.exit_status is None:  # killed by a signal, or the connection closed under it
            raise BoardError(f"{shlex.join(argv)} ended without an exit status "
                             f"(signal {r.exit_signal[0] if r.exit_signal else 'unknown'})")
        return r.exit_status, str(r.stdout or ""), str(r.stderr or "")

    async def read_text(self, path: str) -> str | None:
        import asyncssh

        try:
            async with self.sftp.open(path, "r") as f:
                return await f.read()
        except asyncssh.SFTPNoSuchFile:
            return None
        except (OSError, asyncssh.Error) as e:
            raise BoardError(f"reading {path}: {type(e).__name__}: {e}") from None

    async def put(self, local: Path, remote: str) -> None:
        import asyncssh

        try:
            await self.sftp.put(str(local), remote, recurse=local.is_dir(), preserve=False)
        except (OSError, asyncssh.Error) as e:
            raise BoardError(f"pushing {local} to {remote}: {type(e).__name__}: {e}") from None

    async def write_text(self, path: str, text: str) -> None:
        import asyncssh

        try:
            async with self.sftp.open(path, "w") as f:
                await f.write(text)
        except (OSError, asyncssh.Error) as e:
            raise BoardError(f"writing {path}: {type(e).__name__}: {e}") from None


RC_MARK = "__llama_edge_rc="


class AdbTransport:
    """A device reached over ADB (adb-shell, adbd over TCP): commands through `shell:` (whose
    legacy protocol merges stdout and stderr and carries no exit status: the command echoes
    its status on a last line), files through the sync service. The library is synchronous:
    its calls run in a worker thread."""

    name = "adb"

    def __init__(self, board: Board):
        self.board = board
        self.dev = None

    async def __aenter__(self):
        from adb_shell.adb_device import AdbDeviceTcp
        from adb_shell.auth.sign_pythonrsa import PythonRSASigner

        b = self.board
        try:
            keys = [PythonRSASigner.FromRSAKeyPath(os.path.expanduser(b.key))] if b.key else None
            self.dev = AdbDeviceTcp(b.host, b.port,
                                    default_transport_timeout_s=CONNECT_TIMEOUT)
            await asyncio.to_thread(self.dev.connect, rsa_keys=keys,
                                    auth_timeout_s=CONNECT_TIMEOUT)
        except Exception as e:  # the library raises its own classes and OSError subclasses
            raise BoardError(f"cannot connect to adb device {b.host}:{b.port} "
                             f"({type(e).__name__}: {e})") from None
        return self

    async def __aexit__(self, *exc):
        if self.dev is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.dev.close)
        return False

    async def _call(self, what: str, fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as e:
            raise BoardError(f"{what}: {type(e).__name__}: {e}") from None

    async def run(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        cmd = self.board.remote_command(argv) + f"; echo {RC_MARK}$?"
        out = await self._call(f"running {shlex.join(argv)}", self.dev.shell, cmd,
                               timeout_s=timeout, read_timeout_s=timeout)
        lines = out.rstrip("\n").split("\n")
        if not lines or not lines[-1].startswith(RC_MARK):
            raise BoardError(f"{shlex.join(argv)} ended without an exit status")
        return int(lines[-1][len(RC_MARK):]), "\n".join(lines[:-1]) + "\n", ""

    async def read_text(self, path: str) -> str | None:
        rc, out, _ = await self.run(["cat", path], CONNECT_TIMEOUT)
        return out if rc == 0 else None

    async def put(self, local: Path, remote: str) -> None:
        """A file, or a folder file by file (its folders made first)."""
        files = [(local, remote)] if local.is_file() else [
            (f, f"{remote}/{f.relative_to(local).as_posix()}")
            for f in sorted(local.rglob("*")) if f.is_file()]
        if local.is_dir():
            folders = sorted({remote} | {d.rsplit("/", 1)[0] for _, d in files})
            await _sh(self, self.board, 'mkdir -p "$@"', *folders)
        for src, dest in files:
            await self._call(f"pushing {src} to {dest}", self.dev.push, str(src), dest,
                             read_timeout_s=self.board.timeout)

    async def write_text(self, path: str, text: str) -> None:
        import io

        await self._call(f"writing {path}", self.dev.push, io.BytesIO(text.encode()), path)


def open_transport(board: Board):
    return {"ssh": SshTransport, "adb": AdbTransport, "local": LocalTransport}[board.transport](
        board)


async def _sh(t, board: Board, script: str, *args: str) -> None:
    """A POSIX shell snippet on the board; BoardError when it fails."""
    rc, out, err = await t.run(["sh", "-c", script, "sh", *args], CONNECT_TIMEOUT * 4)
    if rc:
        raise BoardError(f"`{script}` failed ({rc}): {_last_line(err, out)}")


async def push(t, board: Board, model: Path, digest: str) -> tuple[str, bool]:
    """The model's path on the board, and whether it was sent (False: the board held it)."""
    home = f"{board.workdir.rstrip('/')}/{digest[:16]}"
    remote = f"{home}/{model.name}"
    if (await t.read_text(f"{home}/{MARKER}") or "").strip() == digest:
        return remote, False
    partial = f"{home}.partial-{uuid.uuid4().hex[:8]}"
    await _sh(t, board, 'mkdir -p "$1"', partial)
    await t.put(model, f"{partial}/{model.name}")
    await t.write_text(f"{partial}/{MARKER}", digest + "\n")
    # another board sharing this folder may have published the same digest meanwhile: keep its
    # copy (it may be running from it)
    await _sh(t, board, 'if [ "$(cat "$1/$4" 2>/dev/null)" = "$3" ]; then rm -rf "$2"; '
              'else rm -rf "$1" && mv "$2" "$1"; fi', home, partial, digest, MARKER)
    return remote, True


# ------------------------------------------------------------------------------------ rounds
@dataclass
class Spec:
    """What runs on every board (bench's options)."""

    n_prompt: tuple = (128, 512)
    n_gen: tuple = (128,)
    depths: tuple = (0,)
    repeat: int = 3  # rounds; each runs every model once
    warmup: int = 1
    delay: float = 0.0
    ctx: int | None = None
    kv: str = "f32"
    verify: bool = True  # python boards check the artifact's file digests at load

    def tests(self) -> list[tuple[int, int, int]]:
        return [(p, 0, d) for d in self.depths for p in self.n_prompt if p > 0] + \
            [(0, g, d) for d in self.depths for g in self.n_gen if g > 0]

    def argv(self, board: Board, remote: str, program: str | None = None) -> list[str]:
        """The command a round runs on the board (program: the static bench program's path
        there)."""
        head = [*board.argv, program] if board.runtime == "static" else [*board.argv, "bench"]
        a = [*head, "-m", remote,
             "-p", ",".join(map(str, self.n_prompt)), "-n", ",".join(map(str, self.n_gen)),
             "-d", ",".join(map(str, self.depths)), "-r", "1", "--warmup", str(self.warmup),
             "--delay", str(self.delay), "--kv-cache", self.kv, "--board", board.name,
             "-o", "jsonl"]
        if self.ctx:
            a += ["--ctx", str(self.ctx)]
        if not self.verify and board.runtime == "python":
            a += ["--no-verify"]
        if board.threads:
            a += ["-t", str(board.threads)]
        if board.cpu_mask:
            a += ["-C", board.cpu_mask]
        return a


def merge_rounds(rounds: list[dict]) -> dict:
    """One record from the same test's records of several rounds: all samples, their mean and
    deviation; the medians of ttft and load time; the highest peak RSS; the last sensors."""
    row = dict(rounds[-1])
    ok = [r for r in rounds if r["status"] == "ok"]
    if len(ok) < len(rounds):
        bad = next(r for r in rounds if r["status"] != "ok")
        row.update(status="failed", error=bad.get("error", "failed"))
        return row
    n = row["n_prompt"] or row["n_gen"]
    samples = [s for r in rounds for s in r["samples_ns"]]
    row.update(_stats(samples, n))
    row["ttft_s"] = round(statistics.median(r["ttft_s"] for r in rounds), 5)
    row["load_s"] = round(statistics.median(r["load_s"] for r in rounds), 4)
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    row["rounds"] = len(rounds)
    return row


def failure_row(board: Board, model: Path, digest: str | None, test: tuple[int, int, int],
                error: str) -> dict:
    """A record saying a board did not produce this test: every field of the schema, the
    measured ones empty."""
    from .engines import model_bytes

    p, g, d = test
    row = dict.fromkeys(RECORD_FIELDS)
    row.update(model_filename=str(model), model_type=model.name, model_size=model_bytes(str(model)),
               n_threads=board.threads, cpu_mask=board.cpu_mask or "0x0", n_prompt=p, n_gen=g,
               n_depth=d, board=board.name, transport=board.transport, artifact_sha256=digest,
               status="failed", error=error, cpu_features=[], samples_ns=[], samples_ts=[])
    return row


async def _board_job(board: Board, models: list[Path], digests: dict, bundles: dict,
                     spec: Spec, say) -> list[dict]:
    """bundles: model -> (bench bundle, its digest), for static boards."""
    tests = spec.tests()
    got: dict[tuple, list[dict]] = {}
    pushed: dict[Path, bool] = {}
    done_rounds = 0
    acquired = False
    try:
        if board.acquire:
            await _local(board.acquire, "acquire")
            say(f"{board.name}: acquired ({board.acquire})")
        acquired = True
        async with open_transport(board) as t:
            remote, program = {}, None
            if board.runtime == "static":
                binary = Path(board.binary)
                program, sent = await push(t, board, binary, sha256_file(binary))
                await _sh(t, board, 'chmod +x "$1"', program)
                say(f"{board.name}: {binary.name} {'pushed' if sent else 'already there'}")
            for m in models:
                src, digest = bundles[m] if board.runtime == "static" else (m, digests[m])
                remote[m], pushed[m] = await push(t, board, src, digest)
                say(f"{board.name}: {src.name} {'pushed' if pushed[m] else 'already there'}")
            for rnd in range(spec.repeat):
                for m in models:
                    argv = spec.argv(board, remote[m], program)
                    rc, out, err = await t.run(argv, board.timeout)
                    if rc:
                        raise BoardError(f"bench exited with {rc}: {_last_line(err, out)}")
                    rows = _parse_rows(out, board, m, digests[m])
                    for r in rows:
                        got.setdefault((m, r["n_prompt"], r["n_gen"], r["n_depth"]), []).append(r)
                done_rounds += 1
                say(f"{board.name}: round {rnd + 1}/{spec.repeat} done")
    except BoardError as e:
        msg = f"board {board.name}: {e} (after {done_rounds} of {spec.repeat} rounds)"
        say(msg)
        return [failure_row(board, m, digests[m], test, msg) for m in models for test in tests]
    finally:
        if board.release and acquired:
            try:
                await _local(board.release, "release")
            except BoardError as e:
                say(f"board {board.name}: {e}")
    out = []
    for m in models:
        for p, g, d in tests:
            rounds = got.get((m, p, g, d))
            if not rounds:
                out.append(failure_row(board, m, digests[m], (p, g, d),
                                       f"board {board.name}: no record for this test"))
                continue
            row = merge_rounds(rounds)
            row.update(model_filename=str(m), artifact_pushed=pushed[m])
            out.append(row)
    return out


async def _subprocess(argv: list[str], timeout: float, env=None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a program run here; BoardError when it cannot start or
    does not finish in time."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    except OSError as e:
        raise BoardError(f"cannot run {shlex.join(argv)}: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise BoardError(f"no answer within {timeout:g} s: {shlex.join(argv)}") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _last_line(*texts: str) -> str:
    """The last non-empty line of the first non-empty text (a failed command's reason)."""
    for t in texts:
        if t.strip():
            return t.strip().splitlines()[-1][:300]
    return ""


async def _local(command: str, what: str) -> None:
    """A lab tool's command, here (acquire / release a shared board)."""
    rc, out, err = await _subprocess(shlex.split(command), CONNECT_TIMEOUT * 10)
    if rc:
        raise BoardError(f"{what} `{command}` failed ({rc}): {_last_line(err, out)}")


def _parse_rows(out: str, board: Board, model: Path, digest: str) -> list[dict]:
    rows = []
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise BoardError(f"bench printed a malformed record: {line[:200]}") from None
    if not rows:
        raise BoardError(f"bench printed no record: {out.strip()[-300:]}")
    for r in rows:
        if r.get("artifact_sha256") != digest:
            raise BoardError(f"the board ran {r.get('artifact_sha256')}, not {model.name} "
                             f"({digest})")
        r["transport"] = board.transport
    return rows


def run_fleet(boards: list[Board], models: list[str], spec: Spec, say=lambda s: None) -> list[dict]:
    """Every model on every board (in parallel across boards); the merged records, boards in
    file order, models in the order given."""
    paths = [Path(m) for m in models]
    digests = {}
    for p in paths:
        if not p.exists():
            raise EdgeError(f"{p}: no such artifact to push to the boards")
        digests[p] = artifact_digest(str(p))
        if digests[p] is None:
            raise EdgeError(f"{p}: not an artifact (no manifest.json to name it by)")
    if spec.repeat < 1:
        raise EdgeError("repeat (rounds) must be at least 1")
    with tempfile.TemporaryDirectory(prefix="llama-edge-bundles-") as tmp:
        bundles = {}
        if any(b.runtime == "static" for b in boards):
            from .bench_bundle import write_bundle

            for i, p in enumerate(paths):
                say(f"bench bundle of {p}")
                (Path(tmp) / str(i)).mkdir()
                out = write_bundle(p, Path(tmp) / str(i) / f"{p.name}.lebench")
                bundles[p] = (out, sha256_file(out))

        async def main():
            return await asyncio.gather(*(_board_job(b, paths, digests, bundles, spec, say)
                                          for b in boards))

        return [r for rows in asyncio.run(main()) for r in rows]


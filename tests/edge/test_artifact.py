"""The edge artifact reader and writer against every class of RELIABILITY.md "Artifact loading
(runtime side)" and the writer's part of "Export pipeline".

A tiny random Llama (2 layers, hidden 64) with a byte-level BPE tokenizer is written once with
the product's writer: 4-bit linears (symmetric and asymmetric) with int8 activations, so row
sums are stored and read; an int8 embedding tied to an int8-activation lm_head; float32 norms.
Each test damages a copy in one way and checks that `load_artifact` raises ArtifactError naming
the file and the field or tensor at fault (never another exception, never a crash). Damage that
must get past the manifest's own digest is written "consistently": the files' sizes and digests
and the manifest digest are recomputed, as a buggy or hostile toolchain would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner

from edge.artifact import (
    ACT_INT8,
    FORMAT_VERSION,
    MANIFEST,
    WEIGHTS,
    HUGE_PAGE,
    WEIGHT_MEMORY,
    _read_resident,
    file_digest,
    load_artifact,
    manifest_digest,
    resolve_weight_memory,
)
from edge.atomic import DestinationError, WriteError
from edge.cli import main as edge_cli
from edge.errors import ArtifactError, EdgeError
from edge.engines.native import EdgeEngine
from edge.safetensors import read_header
from edge.tokenizer import Tokenizer
from support.artifacts import (CFG, MAX_CONTEXT, TOKENIZER_VOCAB, write)

PROMPT = [5, 17, 256, 99, 3, 41, 200, 7]
EMB = "model.embed_tokens"
Q0 = "model.layers.0.self_attn.q_proj"  # symmetric q4
K0 = "model.layers.0.self_attn.k_proj"  # asymmetric q4 (has zero points)
DOWN0 = "model.layers.0.mlp.down_proj"
NORM0 = "model.layers.0.input_layernorm"
FUZZ_CASES = 300


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("artifact") / "good")


@pytest.fixture(scope="module")
def good_logits(good) -> np.ndarray:
    return EdgeEngine(good, threads=1).session().prefill(PROMPT).copy()


@pytest.fixture
def art(good, tmp_path) -> Path:
    """A private copy of the good artifact to damage."""
    return Path(shutil.copytree(good, tmp_path / "art"))


# ---------------------------------------------------------------------------------- helpers
def expect(root, *fragments, file=None, verify=True) -> str:
    """load_artifact(root) must raise ArtifactError naming `file` (a path, or a name inside the
    artifact; default the manifest) and containing every fragment; returns the message."""
    root = Path(root)
    file = root / MANIFEST if file is None else root / file if isinstance(file, str) else file
    msgs = []
    for memory in ("mapped", "resident"):  # the same checks whichever way the weights are held
        with pytest.raises(ArtifactError) as ei:
            load_artifact(root, verify=verify, weight_memory=memory)
        msgs.append(str(ei.value))
    msg = msgs[0]
    assert msgs[1] == msg, msgs
    assert str(file) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert "\n" not in msg, msg  # one line for the CLI
    return msg


def read_manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def save_manifest(root: Path, m: dict, redigest: bool = True) -> None:
    if redigest:
        m["digest"] = manifest_digest(m)
    (root / MANIFEST).write_text(json.dumps(m, indent=1) + "\n")


def edit_manifest(root: Path, fn, redigest: bool = True) -> None:
    """Apply fn to the parsed manifest and write it back, self-consistent when redigest."""
    m = read_manifest(root)
    fn(m)
    save_manifest(root, m, redigest)


def redigest_file(root: Path, fname: str) -> None:
    """Record a rewritten file's size and digest in the manifest (and re-digest it)."""
    m = read_manifest(root)
    p = root / fname
    m["files"][fname] = {"bytes": p.stat().st_size, "digest": file_digest(p)}
    save_manifest(root, m)


def rewrite_weights(root: Path, fn) -> None:
    """Rewrite weights.safetensors with fn applied to its arrays (name -> numpy array), then
    make the manifest consistent with the new file."""
    arrays = dict(safetensors.numpy.load_file(str(root / WEIGHTS)))
    fn(arrays)
    safetensors.numpy.save_file(arrays, str(root / WEIGHTS))
    redigest_file(root, WEIGHTS)


def set_value(key: str, index, value):
    def fn(arrays):
        a = arrays[key].copy()
        a[index] = value
        arrays[key] = a
    return fn


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


# ---------------------------------------------------------------------------------- baseline
def test_good_artifact_loads_and_runs(good, good_logits):
    for verify in (True, False):
        a = load_artifact(good, verify=verify)
        assert a.max_context == MAX_CONTEXT and a.chat_format == "chatml"
        assert a.tied == {"lm_head": EMB}
        assert a.weights["lm_head"] is a.weights[EMB]
        assert a.weights[EMB].rowsum is not None and a.weights[Q0].zp is None
        assert a.weights[K0].zp is not None
        assert a.tokenizer.vocab_size == TOKENIZER_VOCAB
        assert set(a.acts.values()) == {None, ACT_INT8}
        a.close()
    assert load_artifact(good / MANIFEST).path == good  # the manifest's path works too
    assert good_logits.shape == (CFG.vocab_size,) and np.isfinite(good_logits).all()
    assert good_logits.std() > 0
    # every file of a finished artifact is in place and nothing else
    assert sorted(p.name for p in good.iterdir()) == sorted(
        [MANIFEST, WEIGHTS, "tokenizer.json", "tokenizer_config.json"])


# ---------------------------------------------------------------------------------- weight memory
@pytest.mark.parametrize("memory", WEIGHT_MEMORY[1:])
def test_weight_memory_same_results(good, good_logits, memory):
    """Mapped and resident weights give bit-identical logits; both are read-only, and resident
    weights start on a huge-page boundary (tensor addresses = base + file offset)."""
    a = load_artifact(good, weight_memory=memory)
    assert a.weight_memory == memory
    q = a.weights[Q0].data
    assert not q.flags.writeable
    if memory == "resident":
        start = read_header(good / WEIGHTS)[0][f"{Q0}.data"].start
        assert (q.ctypes.data - start) % HUGE_PAGE == 0
    logits = EdgeEngine(a, threads=1).session().prefill(PROMPT)
    np.testing.assert_array_equal(logits, good_logits)


def test_thread_counts_give_identical_logits(good):
    """Rows are split between threads (decode hands the last rows of each product to whichever
    thread is free), but every output is computed by one thread in one order: prompt and decode
    logits are bit-identical for any thread count."""
    def run(threads):
        s = EdgeEngine(good, threads=threads).session()
        out = [s.prefill(PROMPT).copy()]
        for _ in range(12):
            out.append(s.decode(int(np.argmax(out[-1]))).copy())
        return np.stack(out)

    one = run(1)
    for threads in (2, 3, 5):
        np.testing.assert_array_equal(run(threads), one, err_msg=f"{threads} threads")


@pytest.mark.parametrize("setting, expected", [
    ("always [madvise] never\n", "resident"), ("[always] madvise never\n", "resident"),
    ("always madvise [never]\n", "mapped"), (None, "mapped")])
def test_auto_weight_memory_follows_huge_page_setting(tmp_path, monkeypatch, setting, expected):
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting)
    monkeypatch.setattr("edge.artifact.THP_SETTING", str(path))
    assert resolve_weight_memory("auto") == expected
    assert resolve_weight_memory("mapped") == "mapped"
    assert resolve_weight_memory("resident") == "resident"


def test_unknown_weight_memory(good):
    with pytest.raises(EdgeError, match="weight memory 'huge': choose one of auto, mapped, resident"):
        load_artifact(good, weight_memory="huge")
    r = CliRunner().invoke(edge_cli, ["bench", "-m", str(good), "--weights", "huge"])
    assert r.exit_code == 2 and "'huge' is not one of" in r.output


def test_weights_shorter_than_their_size_while_read(art):
    """A weights file cut after its size was checked (replaced during the load) stops the
    resident read with the file and the byte it ended at."""
    w = art / WEIGHTS
    size = w.stat().st_size
    with pytest.raises(ArtifactError) as ei:
        _read_resident(w, size + 100, True)
    assert str(ei.value) == (f"{w}: ended at byte {size} of {size + 100} while being read: "
                             "truncated or replaced; export again")


def test_cli_bench_reports_weight_memory(good):
    for memory in WEIGHT_MEMORY[1:]:
        r = CliRunner().invoke(edge_cli, ["bench", "-m", str(good), "--weights", memory,
                                          "--repeat", "1", "--threads", "1", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["weight_memory"] == memory


# ---------------------------------------------------------------------------------- truncation
def _offsets(size: int, hstart: int, rng: random.Random) -> list[int]:
    fixed = {0, 1, 7, 8, 9, hstart // 2, hstart - 1, hstart, hstart + 1, size - 2, size - 1}
    return sorted(fixed | {rng.randrange(hstart, size) for _ in range(12)})


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_weights(art, verify):
    w = art / WEIGHTS
    original = w.read_bytes()
    size = len(original)
    for cut in _offsets(size, data_start(w), random.Random(1)):
        truncate(w, cut)
        expect(art, f"is {cut} bytes but the manifest says {size}", "truncated", file=w,
               verify=verify)
        w.write_bytes(original)
    load_artifact(art, verify=verify)


@pytest.mark.parametrize("fname", ["tokenizer.json", "tokenizer_config.json"])
def test_truncated_tokenizer_files(art, fname):
    p = art / fname
    size = p.stat().st_size
    for cut in (0, 1, size // 2, size - 1):
        truncate(p, cut)
        for verify in (True, False):
            expect(art, f"is {cut} bytes but the manifest says {size}", file=p, verify=verify)


def test_truncated_weights_with_consistent_manifest(art):
    """A truncated weights file recorded as such in the manifest (size + digest) is still
    refused by the safetensors header check, naming the tensor the file was cut in."""
    w, mp = art / WEIGHTS, art / MANIFEST
    original, manifest = w.read_bytes(), mp.read_bytes()
    hstart = data_start(w)
    last = max(read_header(w)[0].values(), key=lambda t: t.end).name
    for cut, frags in ((4, ["file is 4 bytes, too small to be safetensors"]),
                       (hstart - 3, ["safetensors header length", "truncated"]),
                       (len(original) - 1, [f"tensor '{last}'", "truncated"])):
        truncate(w, cut)
        redigest_file(art, WEIGHTS)
        for verify in (True, False):
            expect(art, *frags, file=w, verify=verify)
        w.write_bytes(original)
        mp.write_bytes(manifest)
    load_artifact(art)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_manifest(art, verify):
    mp = art / MANIFEST
    original = mp.read_bytes()
    rng = random.Random(2)
    cuts = sorted({0, 1, 2, len(original) // 2, len(original) - 2}
                  | {rng.randrange(len(original) - 1) for _ in range(25)})
    for cut in cuts:
        truncate(mp, cut)
        expect(art, "is not valid JSON", "export again", verify=verify)
        mp.write_bytes(original)
    # Only the final newline can go: what remains is the complete manifest.
    truncate(mp, len(original) - 1)
    assert load_artifact(art, verify=verify).max_context == MAX_CONTEXT


# ---------------------------------------------------------------------------------- fuzzing
def _parsed(raw: bytes, fname: str):
    """What a file means to the reader: the manifest's JSON, the weights' header JSON (None
    when unparsable); other files are compared byte for byte."""
    try:
        if fname == MANIFEST:
            return json.loads(raw.decode("utf-8"))
        if fname == WEIGHTS:
            n = int.from_bytes(raw[:8], "little")
            return json.loads(raw[8:8 + n].decode("utf-8")) if n <= len(raw) - 8 else None
    except (UnicodeDecodeError, ValueError):
        return None
    return raw


@pytest.mark.parametrize("fname", [WEIGHTS, MANIFEST, "tokenizer.json", "tokenizer_config.json"])
def test_fuzz_mutations(art, fname):
    """Seeded random byte mutations: the load raises ArtifactError naming the artifact, or
    loads where nothing the reader checks changed (tensor values or tokenizer text with
    verify=False, whitespace of the manifest's JSON); never another exception. With
    verify=True every change of content is detected."""
    p = art / fname
    original = p.read_bytes()
    meaning = _parsed(original, fname)
    hstart = data_start(art / WEIGHTS)
    rng = random.Random(f"fuzz-{fname}")
    loaded = {True: 0, False: 0}
    ran = 0
    for i in range(FUZZ_CASES):
        data = bytearray(original)
        # mostly single bytes; sometimes a burst; bias a third of the weights' cases to the header
        count = rng.choice((1, 1, 1, 2, 3, 8, 32))
        hi = hstart if fname == WEIGHTS and i % 3 == 0 else len(data)
        positions = [rng.randrange(hi) for _ in range(count)]
        for pos in positions:
            data[pos] = (data[pos] + rng.randrange(1, 256)) % 256
        p.write_bytes(bytes(data))
        same = _parsed(bytes(data), fname) == meaning
        for verify in (True, False):
            try:
                a = load_artifact(art, verify=verify)
            except ArtifactError as e:
                assert str(art) in str(e) and "\n" not in str(e), str(e)
                continue
            loaded[verify] += 1
            where = f"case {i}: {fname} bytes {positions}, verify={verify}"
            if fname == MANIFEST:
                assert same, where  # only JSON whitespace changed
            else:
                assert not verify, where  # the file's digest covers every byte
                if fname == WEIGHTS:
                    assert same or min(positions) >= hstart, where
            if ran < 5 and not same:  # the kernels accept whatever the reader let through
                out = EdgeEngine(a, threads=1).session().prefill(PROMPT)
                assert out.shape == (CFG.vocab_size,)
                ran += 1
            a.close()
    p.write_bytes(original)
    load_artifact(art)
    if fname == WEIGHTS:
        assert loaded[False] > 0  # tensor values are not checked without digests
    assert loaded[True] <= loaded[False]


# ---------------------------------------------------------------------------------- altered content
def test_flipped_tensor_byte_fails_digest(art, good_logits):
    w = art / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's values: the header stays valid
    w.write_bytes(bytes(data))
    expect(art, "content does not match the manifest's digest", "export again", file=w)
    load_artifact(art, verify=False).close()  # without digests the values are taken as stored


@pytest.mark.parametrize("fname", ["tokenizer.json", "tokenizer_config.json"])
def test_altered_tokenizer_file_fails_digest(art, fname):
    p = art / fname
    text = p.read_text()
    p.write_text(text.replace('"', "'", 1) if fname == "tokenizer.json"
                 else text.replace('"add_bos_token": false', '"add_bos_token": true '))
    assert p.stat().st_size == len(text.encode())
    expect(art, "content does not match the manifest's digest", file=p)


def test_edited_manifest_fails_own_digest(art):
    edit_manifest(art, lambda m: m.update(max_context=MAX_CONTEXT * 2), redigest=False)
    for verify in (True, False):
        expect(art, "field 'digest' does not match the manifest's content", "export again",
               verify=verify)


def test_manifest_without_digest(art):
    edit_manifest(art, lambda m: m.pop("digest"), redigest=False)
    expect(art, "field 'digest'")


_DELETE = object()


def _set(path: str, value):
    """A manifest edit setting the field at `path` (keys joined by '|': tensor names contain
    dots); the value _DELETE removes it."""
    def fn(m):
        *head, last = path.split("|")
        d = m
        for key in head:
            d = d[key]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value
    return fn


def case(path: str, value, frags: list[str], file=None):
    return pytest.param(_set(path, value), frags, file,
                        id=f"{path.replace('|', '.')}={'deleted' if value is _DELETE else value!r}")


@pytest.mark.parametrize("edit,frags,file", [
    # tensors described differently from what the file holds
    case(f"tensors|{Q0}|shape", [64, 128],
         [f"field 'tensors.{Q0}': shape [64, 128], the config needs [64, 64]"]),
    case(f"tensors|{NORM0}|shape", [64, 1],
         [f"field 'tensors.{NORM0}': shape [64, 1], the config needs [64]"]),
    case(f"tensors|{Q0}|kind", "q8", [f"tensor '{Q0}.data': dtype U8, expected I8"], WEIGHTS),
    case(f"tensors|{K0}|kind", "q8u", [f"tensor '{K0}.data': shape [32, 32], expected [32, 64]"],
         WEIGHTS),
    case(f"tensors|{Q0}|kind", "f16",
         [f"field 'tensors.{Q0}': int8 activations need integer weights, not f16"]),
    case(f"tensors|{Q0}|kind", "q3", [f"field 'tensors.{Q0}': unknown kind 'q3'"]),
    case(f"tensors|{NORM0}|kind", "f16", [f"field 'tensors.{NORM0}': vectors are stored as f32"]),
    case(f"tensors|{Q0}|group", 64, [f"tensor '{Q0}.scale': shape [64, 2], expected [64, 1]"],
         WEIGHTS),
    case(f"tensors|{K0}|zero_points", False,
         [f"tensor '{K0}.zp' is not described by the manifest"], WEIGHTS),
    case(f"tensors|{Q0}|zero_points", True, [f"tensor '{Q0}.zp' is missing"], WEIGHTS),
    case(f"tensors|{Q0}|zero_points", _DELETE,
         [f"field 'tensors.{Q0}': 'zero_points' = None is not valid for kind q4"]),
    case(f"tensors|{EMB}|zero_points", True,
         [f"field 'tensors.{EMB}': 'zero_points' = True is not valid for kind q8"]),
    case(f"tensors|{Q0}|act", None, [f"tensor '{Q0}.rowsum' is not described by the manifest"],
         WEIGHTS),
    case(f"tensors|{Q0}|act", "int4_dyn",
         [f"field 'tensors.{Q0}': activation handling 'int4_dyn' is not supported"]),
    case(f"tensors|{Q0}", [1, 2], [f"field 'tensors.{Q0}' is not an object"]),
    case(f"tensors|{Q0}", _DELETE, [f"field 'tensors' lacks {Q0}"]),
    case("tensors|model.layers.9.mlp.up_proj", {"kind": "f32", "shape": [1]},
         ["field 'tensors' has 'model.layers.9.mlp.up_proj', which this model does not use"]),
    case("tensors|lm_head|tied_to", "model.norm",
         ["field 'tensors.lm_head': tied to 'model.norm' of another shape"]),
    case("tensors|lm_head|tied_to", "lm_head",
         ["field 'tensors.lm_head': tied to 'lm_head', which is not a stored tensor"]),
    case("tensors|lm_head|tied_to", "model.embed",
         ["tied to 'model.embed', which is not a stored tensor"]),
    # the model description itself
    case("config|hidden_size", 128, ["field 'tensors.", "the config needs"]),
    case("config|num_key_value_heads", 3, ["field 'config'", "num_key_value_heads"]),
    case("config|vocab_size", -1, ["field 'config'", "vocab_size"]),
    case("config", _DELETE, ["field 'config' is missing"]),
    case("max_context", 0, ["field 'max_context' = 0 is not in 1..512"]),
    case("max_context", 4096, ["field 'max_context' = 4096 is not in 1..512"]),
    case("max_context", "256", ["field 'max_context' is missing or not a int"]),
    case("tensors", [], ["field 'tensors' is missing or not a dict"]),
    case("generation", None, ["field 'generation': must be an object"]),
    case("generation", {"temperature": -1.0}, ["field 'generation': parameter temperature"]),
    case("generation", {"temprature": 0.7}, ["field 'generation': unknown sampling default"]),
    case("tokenizer|chat_format", "alpaca", ["field 'tokenizer.chat_format' = 'alpaca'"]),
    # the file table
    case(f"files|{WEIGHTS}", _DELETE, [f"field 'files' does not list {WEIGHTS}"]),
    case(f"files|{WEIGHTS}|bytes", "12", [f"field 'files.{WEIGHTS}' is malformed"]),
    case("files|../escape.json", {"bytes": 1, "digest": "0"},
         ["missing (listed in the manifest)"], "../escape.json"),
    case("files|extra.bin", {"bytes": 1, "digest": "0"}, ["missing (listed in the manifest)"],
         "extra.bin"),
])
def test_self_consistent_manifest_inconsistent_with_files(art, edit, frags, file):
    edit_manifest(art, edit)
    expect(art, *frags, file=file)


# ---------------------------------------------------------------------------------- versions
def test_newer_format_version(art):
    edit_manifest(art, lambda m: m.update(format_version=FORMAT_VERSION + 1,
                                          producer="llama-edge 9.0"))
    expect(art, f"format version {FORMAT_VERSION + 1} was written by a newer llama-edge "
           "(llama-edge 9.0)", "upgrade llama-edge")


def test_older_format_version(art):
    edit_manifest(art, lambda m: m.update(format_version=FORMAT_VERSION - 1,
                                          producer="llama-edge 0.0.1"))
    expect(art, f"format version {FORMAT_VERSION - 1} (llama-edge 0.0.1) is older",
           "re-export the model with this version's llama-export")


@pytest.mark.parametrize("value", ["1", 1.0, True, None])
def test_format_version_not_an_integer(art, value):
    edit_manifest(art, lambda m: m.update(format_version=value))
    expect(art, f"field 'format_version' = {value!r} is not an integer")


@pytest.mark.parametrize("value", ["gguf", None, "LLAMA-EDGE"])
def test_wrong_format_name(art, value):
    edit_manifest(art, lambda m: m.update(format=value))
    expect(art, f"field 'format' is {value!r}, not 'llama-edge'")


def test_manifest_not_an_object(art):
    (art / MANIFEST).write_text("[1, 2, 3]\n")
    expect(art, "is not a JSON object")


def test_manifest_duplicate_key(art):
    text = (art / MANIFEST).read_text()
    (art / MANIFEST).write_text(text.replace('"recipe":', '"recipe": "x",\n "recipe":', 1))
    expect(art, "is not valid JSON", "duplicate key 'recipe'")


# ---------------------------------------------------------------------------------- quantization
@pytest.mark.parametrize("value", [0.0, -0.01, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", [Q0, EMB])
def test_bad_scales(art, name, value):
    rewrite_weights(art, set_value(f"{name}.scale", (1, 0), value))
    for verify in (True, False):
        expect(art, f"tensor '{name}.scale': scales must be finite and positive", file=WEIGHTS,
               verify=verify)


def test_q4_zero_point_out_of_range(art):
    rewrite_weights(art, set_value(f"{K0}.zp", (3, 1), 16))
    expect(art, f"tensor '{K0}.zp': 4-bit zero points must be <= 15, found 16", file=WEIGHTS)


def test_q4_zero_points_at_the_limit_load(art):
    rewrite_weights(art, set_value(f"{K0}.zp", (3, 1), 15))
    load_artifact(art).close()


@pytest.mark.parametrize("group", [48, 0, -32, 3.5, True, None])
def test_group_not_dividing_k(art, group):
    edit_manifest(art, _set(f"tensors|{Q0}|group", group))
    expect(art, f"field 'tensors.{Q0}': group size {group!r} does not divide the input "
           "dimension 64")


def test_q4_group_not_multiple_of_32(art):
    edit_manifest(art, _set(f"tensors|{Q0}|group", 16))
    expect(art, f"field 'tensors.{Q0}': 4-bit weights need rows of a multiple of 64 and groups "
           "of a multiple of 32 (rows 64, group 16)")


def test_q4_k_not_multiple_of_64(art):
    """intermediate_size 96: down_proj's rows (k = 96) cannot be packed in 64-value blocks."""
    def edit(m):
        m["config"]["intermediate_size"] = 96
        for name, e in m["tensors"].items():
            if name.endswith(("gate_proj", "up_proj")):
                e["shape"] = [96, 64]
            elif name.endswith("down_proj"):
                e["shape"] = [64, 96]
    edit_manifest(art, edit)
    expect(art, f"field 'tensors.{DOWN0}': 4-bit weights need rows of a multiple of 64",
           "(rows 96, group 32)")


@pytest.mark.parametrize("delta", [-1, 1])
def test_packed_length_off_by_one(art, delta):
    def fn(arrays):
        d = arrays[f"{Q0}.data"]
        arrays[f"{Q0}.data"] = (d[:, :delta] if delta < 0
                                else np.concatenate([d, d[:, :1]], axis=1))
    rewrite_weights(art, fn)
    expect(art, f"tensor '{Q0}.data': shape [64, {32 + delta}], expected [64, 32]", file=WEIGHTS)


def test_scale_table_off_by_one_row(art):
    rewrite_weights(art, lambda a: a.update({f"{K0}.scale": a[f"{K0}.scale"][:-1]}))
    expect(art, f"tensor '{K0}.scale': shape [31, 2], expected [32, 2]", file=WEIGHTS)


@pytest.mark.parametrize("key,dtype,stored", [
    (f"{Q0}.scale", np.float32, "F32"), (f"{K0}.zp", np.int8, "I8"),
    (f"{EMB}.data", np.uint8, "U8"), (f"{NORM0}.data", np.float16, "F16"),
    (f"{Q0}.rowsum", np.float64, "F64"),
])
def test_wrong_dtype(art, key, dtype, stored):
    rewrite_weights(art, lambda a: a.update({key: a[key].astype(dtype)}))
    expect(art, f"tensor '{key}': dtype {stored}, expected", file=WEIGHTS)


@pytest.mark.parametrize("name", [Q0, EMB])
def test_missing_rowsum(art, name):
    """An int8-activation linear (or the tied lm_head through its embedding) needs row sums."""
    rewrite_weights(art, lambda a: a.pop(f"{name}.rowsum"))
    expect(art, f"tensor '{name}.rowsum' is missing", file=WEIGHTS)


def test_non_finite_rowsum(art):
    rewrite_weights(art, set_value(f"{Q0}.rowsum", 5, np.nan))
    expect(art, f"tensor '{Q0}.rowsum': non-finite row sums", file=WEIGHTS)


@pytest.mark.parametrize("key", [f"{Q0}.scale", f"{K0}.zp", f"{DOWN0}.data", f"{NORM0}.data",
                                 f"{EMB}.data"])
def test_missing_tensor(art, key):
    rewrite_weights(art, lambda a: a.pop(key))
    expect(art, f"tensor '{key}' is missing", file=WEIGHTS)


@pytest.mark.parametrize("key", ["lm_head.data", f"{Q0}.zp", "unrelated"])
def test_extra_undescribed_tensor(art, key):
    rewrite_weights(art, lambda a: a.update({key: np.ones((4, 4), np.uint8)}))
    expect(art, f"tensor '{key}' is not described by the manifest", file=WEIGHTS)


def test_weights_not_safetensors(art):
    (art / WEIGHTS).write_bytes(b"\xff" * 64)
    redigest_file(art, WEIGHTS)
    expect(art, "safetensors header length", file=WEIGHTS)


# ---------------------------------------------------------------------------------- tokenizer
def test_tokenizer_larger_than_embedding(tmp_path):
    small = CFG.replace(vocab_size=200, eos_token_ids=(1,))
    root = write(tmp_path / "a", cfg=small)
    expect(root, f"the tokenizer has {TOKENIZER_VOCAB} tokens but the embedding only 200 rows",
           "do not match", file="tokenizer.json")


@pytest.mark.parametrize("field,value,frag", [
    ("eos_token_ids", [CFG.vocab_size], "field 'tokenizer.eos_token_ids' = [320] must list "
                                        "token ids below 320"),
    ("eos_token_ids", [-1], "field 'tokenizer.eos_token_ids' = [-1]"),
    ("eos_token_ids", [], "field 'tokenizer.eos_token_ids' = []"),
    ("eos_token_ids", "2", "field 'tokenizer.eos_token_ids' = '2'"),
    ("bos_token_id", 10_000, "field 'tokenizer.bos_token_id' = 10000 is outside the vocabulary"),
    ("bos_token_id", "1", "field 'tokenizer.bos_token_id' = '1' is outside the vocabulary"),
])
def test_special_ids_outside_vocabulary(art, field, value, frag):
    edit_manifest(art, _set(f"tokenizer|{field}", value))
    expect(art, frag)


def test_tokenizer_config_names_unknown_token(art):
    p = art / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["eos_token"] = "<|nope|>"
    p.write_text(json.dumps(cfg))
    redigest_file(art, "tokenizer_config.json")
    expect(art, "tokenizer:", "field 'eos_token' names '<|nope|>'", file=art)


def test_tokenizer_json_not_loadable(art):
    (art / "tokenizer.json").write_text('{"model": {"type": "Nope"}}')
    redigest_file(art, "tokenizer.json")
    expect(art, "tokenizer:", "tokenizer.json cannot be loaded", file=art)


def test_tokenizer_json_not_utf8(art):
    (art / "tokenizer.json").write_bytes(b'{"version": "\xc4"}')
    redigest_file(art, "tokenizer.json")
    expect(art, "is not UTF-8 text", file="tokenizer.json")


@pytest.mark.parametrize("fname", ["tokenizer.json", "tokenizer_config.json"])
def test_missing_tokenizer_file(art, fname):
    (art / fname).unlink()
    for verify in (True, False):
        expect(art, "missing (listed in the manifest)", file=fname, verify=verify)


def test_tokenizer_file_not_listed(art):
    edit_manifest(art, _set("files|tokenizer.json", _DELETE))
    expect(art, "field 'files' does not list tokenizer.json")


# ---------------------------------------------------------------------------------- not artifacts
def test_interrupted_export_without_manifest(art):
    (art / MANIFEST).unlink()
    (art / (MANIFEST + ".partial")).write_text("{")
    msg = expect(art, f"no {MANIFEST}: not an edge artifact", "export again", file=art)
    assert str(art / MANIFEST) not in msg


def test_empty_directory(tmp_path):
    msg = expect(tmp_path, f"no {MANIFEST}: not an edge artifact", file=tmp_path)
    assert "export again" not in msg


def test_path_does_not_exist(tmp_path):
    expect(tmp_path / "nope", "no such artifact directory", file=tmp_path / "nope")


def test_path_is_a_file(art):
    expect(art / WEIGHTS, "is not a directory", MANIFEST, file=art / WEIGHTS)


def test_weights_replaced_by_directory(art):
    (art / WEIGHTS).unlink()
    (art / WEIGHTS).mkdir()
    expect(art, "missing (listed in the manifest)", file=WEIGHTS)


# ---------------------------------------------------------------------------------- writing
def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def leftovers(dest: Path) -> list[str]:
    """Temporary or set-aside directories of `dest`'s writer in its parent."""
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}"))


def test_existing_destination_refused_without_force(art):
    before = snapshot(art)
    with pytest.raises(DestinationError) as ei:
        write(art, seed=1)
    assert str(art) in str(ei.value) and "already exists" in str(ei.value)
    assert "force" in str(ei.value)
    assert snapshot(art) == before and leftovers(art) == []


def test_force_replaces(art, good_logits, monkeypatch):
    import edge.atomic as ea

    swaps = []
    real = ea._exchange
    monkeypatch.setattr(ea, "_exchange", lambda a, b: swaps.append(real(a, b)) or swaps[-1])
    write(art, seed=1, force=True)
    assert swaps == [True]  # one atomic swap: the path never lacks an artifact
    assert leftovers(art) == []
    out = EdgeEngine(art, threads=1).session().prefill(PROMPT)
    assert not np.allclose(out, good_logits)


def test_force_replaces_a_file_and_a_symlink(tmp_path, good):
    f = tmp_path / "file"
    f.write_text("not an artifact")
    write(f, force=True)
    assert load_artifact(f).max_context == MAX_CONTEXT and leftovers(f) == []
    link = tmp_path / "link"
    link.symlink_to(good)
    write(link, seed=1, force=True)
    assert not link.is_symlink() and load_artifact(link).max_context == MAX_CONTEXT
    assert leftovers(link) == []
    load_artifact(good).close()  # the symlink's target is untouched


def _fail_after_partial_weights(arrays, filename, *a, **kw):
    Path(filename).write_bytes(b"\0" * 100)
    raise OSError(28, "No space left on device")


def _fail_tokenizer_save(self, directory, *a, **kw):
    (Path(directory) / "tokenizer.json").write_text("{")
    raise KeyboardInterrupt


@pytest.mark.parametrize("inject", ["weights", "tokenizer", "manifest"])
def test_failure_while_writing_keeps_previous(art, monkeypatch, good_logits, inject):
    before = snapshot(art)
    if inject == "weights":
        monkeypatch.setattr(safetensors.numpy, "save_file", _fail_after_partial_weights)
        exc = WriteError
    elif inject == "tokenizer":
        monkeypatch.setattr(Tokenizer, "save", _fail_tokenizer_save)
        exc = KeyboardInterrupt
    else:
        real = Path.write_text

        def write_text(self, *a, **kw):
            if self.name.startswith(MANIFEST):
                real(self, '{"format": "llama-edge"')
                raise OSError(5, "Input/output error")
            return real(self, *a, **kw)
        monkeypatch.setattr(Path, "write_text", write_text)
        exc = WriteError
    with pytest.raises(exc):
        write(art, seed=1, force=True)
    monkeypatch.undo()
    assert snapshot(art) == before and leftovers(art) == []
    out = EdgeEngine(art, threads=1).session().prefill(PROMPT)
    np.testing.assert_array_equal(out, good_logits)


def test_failure_of_a_fresh_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.numpy, "save_file", _fail_after_partial_weights)
    dest = tmp_path / "new"
    with pytest.raises(WriteError, match="no space left"):
        write(dest)
    assert list(tmp_path.iterdir()) == []


def test_failed_swap_restores_previous(art, monkeypatch, good_logits):
    """Where the directories cannot be swapped in one step, the previous artifact is moved
    aside and back if the new one cannot be moved in."""
    import edge.atomic as ea

    real = os.replace

    def replace(src, dst):
        if Path(dst) == art and Path(src).name.startswith(f".{art.name}.tmp-"):
            raise OSError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(ea, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "replace", replace)
    before = snapshot(art)
    with pytest.raises(WriteError, match="permission denied"):
        write(art, seed=1, force=True)
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(art) == before and leftovers(art) == []
    write(art, seed=1, force=True)  # the two-step path itself works
    assert snapshot(art) != before and leftovers(art) == []


_KILLED_WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from support.artifacts import write
print("ready", flush=True)
seed = 1
while True:
    write({dest!r}, seed=seed, force=True)
    seed += 1
"""


def test_killed_writer_never_breaks_the_artifact(art, good):
    """SIGKILL at arbitrary moments of repeated forced rewrites: the path always holds a
    complete artifact; what the killed writer left behind goes at the next write."""
    script = _KILLED_WRITER.format(tests=str(Path(__file__).parents[1]), dest=str(art))
    rng = random.Random(3)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 cwd=str(Path(__file__).parents[2]))
        try:
            assert child.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.2, 0.6))
        finally:
            child.kill()
            child.wait()
        a = load_artifact(art)
        assert a.max_context == MAX_CONTEXT
        a.close()
    write(art, force=True)
    assert leftovers(art) == []
    assert snapshot(art) == snapshot(good)


def test_stale_temporaries_removed(art):
    """Directories of a writer that died are removed by the next write; a live writer's stay."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = [art.parent / f".{art.name}.tmp-{dead.pid}-x1", art.parent / f".{art.name}.old-{dead.pid}-x2"]
    live = art.parent / f".{art.name}.tmp-{os.getpid()}-x3"
    other = art.parent / f".{art.name}x.tmp-{dead.pid}-x4"  # another artifact's
    for d in (*stale, live, other):
        d.mkdir()
        (d / WEIGHTS).write_bytes(b"partial")
    write(art, seed=1, force=True)
    assert leftovers(art) == sorted([live.name, other.name])


def test_set_aside_previous_artifact_restored(art, good):
    """A writer killed between moving the previous artifact aside and moving the new one in:
    the next write puts the previous artifact back before deciding whether it may replace it."""
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    aside = art.parent / f".{art.name}.old-{dead.pid}-x1"
    os.replace(art, aside)
    (art.parent / f".{art.name}.tmp-{dead.pid}-x2").mkdir()
    with pytest.raises(DestinationError, match="already exists"):
        write(art, seed=1)
    assert leftovers(art) == [] and snapshot(art) == snapshot(good)


@pytest.mark.parametrize("memory", WEIGHT_MEMORY[1:])
def test_rewrite_while_mapped(art, good_logits, memory):
    """An engine keeps running on the artifact it loaded after the path is rewritten; a new
    load sees the new content."""
    engine = EdgeEngine(art, threads=1, weight_memory=memory)
    sess = engine.session()
    np.testing.assert_array_equal(sess.prefill(PROMPT), good_logits)
    write(art, seed=1, force=True)
    np.testing.assert_array_equal(sess.prefill(PROMPT), good_logits)
    np.testing.assert_array_equal(engine.session().prefill(PROMPT), good_logits)
    fresh = EdgeEngine(art, threads=1).session().prefill(PROMPT)
    assert not np.allclose(fresh, good_logits)
    np.testing.assert_array_equal(sess.prefill(PROMPT), good_logits)


def test_deterministic(tmp_path, good):
    a = write(tmp_path / "a")
    b = write(tmp_path / "b")
    assert snapshot(a) == snapshot(b) == snapshot(good)


def test_writer_records_zero_points(good):
    t = read_manifest(good)["tensors"]
    assert t[Q0]["zero_points"] is False and t[K0]["zero_points"] is True
    assert t[EMB]["zero_points"] is False and "zero_points" not in t[NORM0]


# ---------------------------------------------------------------------------------- CLI
def test_cli_info_good(good):
    r = CliRunner().invoke(edge_cli, ["info", str(good)])
    assert r.exit_code == 0, r.output
    assert "recipe" in r.stdout and "8da4w" in r.stdout
    assert f"max_context    {MAX_CONTEXT}" in r.stdout
    r = CliRunner().invoke(edge_cli, ["info", str(good), "--json", "--no-verify"])
    d = json.loads(r.stdout)
    assert d["recipe"] == "8da4w" and d["max_context"] == MAX_CONTEXT and d["verified"] is False


def test_cli_info_corrupt(art):
    w = art / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x40
    w.write_bytes(bytes(data))
    r = CliRunner().invoke(edge_cli, ["info", str(art)])
    assert r.exit_code == 1
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {w}: content does not match"), lines
    assert "Traceback" not in r.output


def test_cli_info_corrupt_subprocess(art):
    truncate(art / MANIFEST, 10)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "info", str(art)], capture_output=True,
                       text=True, cwd=str(Path(__file__).parents[2]))
    assert r.returncode == 1
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {art / MANIFEST}: is not valid JSON")

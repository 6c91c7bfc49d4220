"""`llama-edge bench` records: llama-bench's field names, depth sweeps, a failing test as a
failed row, every output format, PyTorch benchmark database records that pass its schema, and
the CPU identified from the auxiliary vector on Arm (qemu-user's /proc/cpuinfo is the host's)."""

from __future__ import annotations

import csv
import io
import json
import struct

import pytest
from click.testing import CliRunner

from edge import bench
from edge.cli import main as edge_cli
from edge.errors import EdgeError
from support.artifacts import write

# llama-bench's own field names (its JSON / CSV output) that our rows carry with that meaning
LLAMA_BENCH_FIELDS = ("model_filename", "model_type", "model_size", "model_n_params",
                      "n_threads", "cpu_mask", "cpu_info", "type_k", "type_v", "n_prompt",
                      "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts",
                      "stddev_ts", "samples_ns", "samples_ts")
OUR_FIELDS = ("engine", "isa", "cpu_features", "emulated", "board", "transport",
              "artifact_sha256", "recipe", "ttft_s", "load_s", "peak_rss_mb", "status")
# The PyTorch benchmark database's record: top-level parts and the keys each must hold
PYTORCH_SCHEMA = {"benchmark": {"name": str, "mode": str, "dtype": str, "extra_info": dict},
                  "model": {"name": str, "type": str, "backend": str, "origins": list,
                            "extra_info": dict},
                  "metric": {"name": str, "benchmark_values": list, "extra_info": dict},
                  "runners": list}
RUNNER_KEYS = {"name": str, "type": str, "cpu_info": str, "cpu_count": int}


def check_pytorch_record(rec: dict) -> None:
    assert set(rec) == set(PYTORCH_SCHEMA), rec.keys()
    for part, keys in PYTORCH_SCHEMA.items():
        if part == "runners":
            assert rec[part] and all(isinstance(r, dict) for r in rec[part])
            for r in rec[part]:
                for k, t in RUNNER_KEYS.items():
                    assert isinstance(r[k], t), (k, r[k])
            continue
        for k, t in keys.items():
            assert isinstance(rec[part][k], t), (part, k, rec[part][k])
    assert all(isinstance(v, (int, float)) for v in rec["metric"]["benchmark_values"])


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return write(tmp_path_factory.mktemp("bench") / "art", max_context=256)


@pytest.fixture(scope="module")
def result(art):
    return bench.run_bench(str(art), threads=1, repeat=2, n_prompt=(16,), n_gen=(4,),
                           depths=(0, 32, 253), warmup=1, board="bench-host")


def test_rows_carry_llama_bench_fields_and_ours(result, art):
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    # pp16 and tg4 at depths 0 and 32; at depth 253 neither fits the 256-position session
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in ok] == [
        (16, 0, 0), (16, 0, 32), (0, 4, 0), (0, 4, 32)]
    for r in ok:
        assert set(LLAMA_BENCH_FIELDS + OUR_FIELDS) <= set(r)
        assert len(r["samples_ns"]) == len(r["samples_ts"]) == 2
        n = r["n_prompt"] or r["n_gen"]
        assert r["avg_ts"] == pytest.approx(sum(n * 1e9 / s for s in r["samples_ns"]) / 2,
                                            rel=1e-6)
        assert r["board"] == "bench-host" and r["transport"] == "local"
        assert r["n_threads"] == 1 and r["model_size"] > 0 and r["model_n_params"] > 0
        assert r["artifact_sha256"] == bench.artifact_digest(str(art))
        assert len(r["artifact_sha256"]) == 64 and r["recipe"] == "8da4w"
    assert result["pp16_tok_s"] > 0 and result["tg4_tok_s"] > 0


def test_a_test_that_does_not_fit_is_a_failed_row(result):
    failed = [r for r in result["rows"] if r["status"] != "ok"]
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in failed] == [(16, 0, 253),
                                                                            (0, 4, 253)]
    assert all("raise --ctx" in r["error"] and "avg_ts" not in r for r in failed)


def test_every_output_format(result):
    rows = result["rows"]
    md = bench.format_rows(rows, "md").splitlines()
    assert md[0].startswith("| model | size | params |") and len(md) == 2 + len(rows)
    assert "pp16 @ d32" in md[3] and "failed: needs" in md[-1]
    parsed = list(csv.DictReader(io.StringIO(bench.format_rows(rows, "csv"))))
    assert len(parsed) == len(rows) and set(LLAMA_BENCH_FIELDS) <= set(parsed[0])
    assert json.loads(parsed[0]["samples_ns"]) == rows[0]["samples_ns"]
    assert json.loads(bench.format_rows(rows, "json")) == rows
    assert [json.loads(line) for line in bench.format_rows(rows, "jsonl").splitlines()] == rows
    recs = json.loads(bench.format_rows(rows, "pytorch"))
    assert len(recs) == 3 * 4  # tokens/s, first token, peak RSS for each successful row
    for rec in recs:
        check_pytorch_record(rec)
    tps = [r for r in recs if r["metric"]["name"] == "token_per_sec"]
    assert tps[0]["metric"]["benchmark_values"] == rows[0]["samples_ts"]
    with pytest.raises(EdgeError, match="output format 'sql'"):
        bench.format_rows(rows, "sql")


def test_cli_csv_and_bad_arguments(art):
    r = CliRunner().invoke(edge_cli, ["bench", "-m", str(art), "-p", "8", "-n", "0", "-r", "1",
                                      "--warmup", "0", "-t", "1", "-o", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [(row["n_prompt"], row["n_gen"], row["status"]) for row in rows] == [("8", "0", "ok")]
    r = CliRunner().invoke(edge_cli, ["bench", "-m", str(art), "-p", "0", "-n", "0"])
    assert r.exit_code == 1 and "nothing to measure" in r.output
    r = CliRunner().invoke(edge_cli, ["bench", "-m", str(art), "-p", "x"])
    assert r.exit_code == 2 and "'x' is not a whole number" in r.output
    r = CliRunner().invoke(edge_cli, ["bench", "-m", str(art), "--cpu-mask", "zz"])
    assert r.exit_code == 1 and "not hexadecimal" in r.output


def test_cpu_mask():
    import os

    allowed = sorted(os.sched_getaffinity(0))
    assert bench.parse_cpu_mask(hex(1 << allowed[0])) == [allowed[0]]
    with pytest.raises(EdgeError, match="selects no CPU"):
        bench.parse_cpu_mask("0x0")
    with pytest.raises(EdgeError, match="may not use"):
        bench.parse_cpu_mask(hex(1 << 200))


# ------------------------------------------------------------------------- CPU identification
X86_HOST_CPUINFO = [{"processor": "0", "vendor_id": "AuthenticAMD", "model name": "AMD EPYC",
                     "flags": "fpu avx2 fma avx512f"}]
ARM_CPUINFO = [{"processor": "0", "features": "fp asimd", "cpu implementer": "0x41",
                "cpu part": "0xd05"},
               {"processor": "4", "features": "fp asimd", "cpu implementer": "0x41",
                "cpu part": "0xd0b"}]


def _hwcap(*names):
    hw = sum(1 << bench.ARM_HWCAP[n] for n in names if n in bench.ARM_HWCAP)
    hw2 = sum(1 << bench.ARM_HWCAP2[n] for n in names if n in bench.ARM_HWCAP2)
    return {bench.AT_HWCAP: hw, bench.AT_HWCAP2: hw2}


def test_arm_features_from_the_auxiliary_vector_under_emulation():
    """qemu-user -cpu cortex-a76: the guest's hwcaps say asimd + dotprod, /proc/cpuinfo is the
    x86 host's: the record says emulated aarch64 with the guest's features."""
    info = bench.cpu_info("aarch64", _hwcap("fp", "asimd", "asimddp"), X86_HOST_CPUINFO)
    assert info["cpu"] == "aarch64 (emulated)" and info["emulated"] is True
    assert info["cpu_features"] == ["fp", "asimd", "asimddp"] and info["isa_source"] == "auxv"
    info = bench.cpu_info("aarch64", _hwcap("fp", "asimd", "asimddp", "sve", "i8mm", "bf16"),
                          X86_HOST_CPUINFO)
    assert info["cpu_features"] == ["fp", "asimd", "asimddp", "sve", "i8mm", "bf16"]


def test_arm_board_names_its_cores():
    info = bench.cpu_info("aarch64", _hwcap("fp", "asimd"), ARM_CPUINFO)
    assert info["cpu"] == "Cortex-A55 + Cortex-A76" and info["emulated"] is False


def test_x86_from_cpuinfo():
    info = bench.cpu_info("x86_64", {}, X86_HOST_CPUINFO)
    assert info["cpu"] == "AMD EPYC" and info["cpu_features"] == ["avx2", "fma", "avx512f"]


def test_auxv_parsing(tmp_path):
    f = tmp_path / "auxv"
    f.write_bytes(struct.pack("<8Q", 6, 4096, bench.AT_HWCAP, 0b11, bench.AT_HWCAP2, 1 << 13,
                              0, 0))
    assert bench.auxv(str(f)) == {6: 4096, bench.AT_HWCAP: 3, bench.AT_HWCAP2: 1 << 13}
    assert bench.auxv(str(tmp_path / "missing")) == {}
    real = bench.auxv()
    assert real.get(6) == 4096 or real.get(6)  # AT_PAGESZ is always there on Linux


def test_sensors_where_readable(tmp_path):
    (tmp_path / "class/thermal/thermal_zone0").mkdir(parents=True)
    (tmp_path / "class/thermal/thermal_zone0/temp").write_text("45000\n")
    (tmp_path / "class/thermal/thermal_zone1").mkdir(parents=True)
    (tmp_path / "class/thermal/thermal_zone1/temp").write_text("61500\n")
    cpu = tmp_path / "devices/system/cpu/cpu0"
    (cpu / "cpufreq").mkdir(parents=True)
    (cpu / "cpufreq/scaling_cur_freq").write_text("1804800\n")
    (cpu / "thermal_throttle").mkdir()
    (cpu / "thermal_throttle/core_throttle_count").write_text("3\n")
    bat = tmp_path / "class/power_supply/battery"
    bat.mkdir(parents=True)
    (bat / "current_now").write_text("500000\n")  # uA
    (bat / "voltage_now").write_text("4000000\n")  # uV
    assert bench.host_sensors(str(tmp_path)) == {"temperature_c": 61.5, "cpu_freq_mhz": 1804.8,
                                                 "throttle_count": 3, "power_w": 2.0}
    assert bench.host_sensors(str(tmp_path / "nothing")) == {}

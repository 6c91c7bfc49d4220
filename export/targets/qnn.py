"""The qnn target: Qualcomm HTP through ExecuTorch's Qualcomm backend.

Everything up to the vendor compiler runs with the public code in the executorch wheel (see
export/targets/vendor.py): the static chunk program, ExecuTorch's QnnQuantizer (16-bit activations;
4-bit weights in blocks of 32 along the input -- HTP's block-wise "16a4w_block" -- for the
transformer linears, 8-bit per-channel weights for the output layer), calibration, and the
simulated program scored against the unquantized model. The compile (QNN HTP context binary
inside a .pte) needs the Qualcomm AI Engine Direct SDK, which is licence-gated: with QNN_SDK_ROOT
pointing to a valid SDK it runs, otherwise the export ends with an error naming the SDK, the
version executorch expects and the variable.

Measured on SmolLM2-135M-Instruct (default plan, packaged evaluation text, 256-token windows):
simulated mean KLD 0.41, top-1 agreement 64 %, PPL 53.7 against 40.3; with 16-bit weights (the
activations' share alone) mean KLD 0.010. The 4-bit weights are min / max rounded (no GPTQ): a
recipe with 8-bit layers trades size for quality.

Building and preparing QnnQuantizer asks ExecuTorch to set the SDK up (its setup downloads one
when QNN_SDK_ROOT is unset) and to read the SDK's version (its native adaptor aborts the process
on a directory without the SDK's libraries). The quantizer needs no SDK, so without a usable one
QNN_SDK_ROOT is set to the empty value ("the caller takes charge of the SDK" in ExecuTorch's
setup, "no SDK" to its version checks) while the quantizer runs, and restored after.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path


from edge.errors import EdgeError

from . import Target, vendor

NAME = "qnn"
SDK_NAME = "Qualcomm AI Engine Direct SDK (QNN)"
SDK_VAR = "QNN_SDK_ROOT"
# The SDK version executorch 1.5.1 downloads and builds its Qualcomm backend against
# (QNN_VERSION in executorch/backends/qualcomm/scripts/download_qnn_sdk.py).
SDK_VERSION = "2.37.0.250724"
SDK_URL = ("https://softwarecenter.qualcomm.com/api/download/software/sdks/"
           f"Qualcomm_AI_Runtime_Community/All/{SDK_VERSION}/v{SDK_VERSION}.zip")
# What a usable SDK directory holds: the host HTP library the compiler loads.
SDK_HTP_LIB = Path("lib") / "x86_64-linux-clang" / "libQnnHtp.so"
SDK_QUERY_TIMEOUT_S = 60
SOC = "SM8650"  # Snapdragon 8 Gen 3 (HTP v75): block-wise 4-bit weights need v69 or newer


def check_request(cfg, recipe) -> None:
    vendor.check_recipe(NAME, cfg, recipe)


def _module_qconfig(ws: vendor.WeightSpec):
    from executorch.backends.qualcomm.quantizer.quantizer import ModuleQConfig, QuantDtype
    from torchao.quantization.pt2e import MinMaxObserver

    dtype = {4: QuantDtype.use_16a4w_block if ws.block else QuantDtype.use_16a4w,
             8: QuantDtype.use_16a8w, 16: QuantDtype.use_16a16w}[ws.bits]
    # Activation ranges: min / max over all calibration chunks. (The quantizer's default moving
    # average keeps ~99% of the first chunk's range, where the KV cache inputs are all zero.)
    return ModuleQConfig(dtype, is_linear_per_channel=True, act_observer=MinMaxObserver)


def make_quantizer(spec):
    """QnnQuantizer for HTP with each linear's weights as `spec` says (module name ->
    WeightSpec); every activation 16-bit."""
    from executorch.backends.qualcomm.quantizer.quantizer import QnnQuantizer
    from executorch.backends.qualcomm.serialization.qc_schema import (QcomChipset,
                                                                      QnnExecuTorchBackendType)

    class PlannedQnnQuantizer(QnnQuantizer):
        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)
            groups: dict[vendor.WeightSpec, set[str]] = {}
            blocks = {}
            for node, name in vendor.linear_nodes(model.graph, NAME):
                ws = spec(name)
                groups.setdefault(ws, set()).add(node.name)
                if ws.block:
                    blocks[node.name] = (1, ws.block)  # (out, in) weight: blocks along input
            self.set_block_size_map(blocks)
            self.set_submodule_qconfig_list(
                [(lambda n, names=frozenset(names): n.name in names, _module_qconfig(ws))
                 for ws, names in groups.items()])
            return model

    logging.disable(logging.WARNING)  # the SDK's op-constraint tables are absent: a warning
    try:
        q = PlannedQnnQuantizer(backend=QnnExecuTorchBackendType.kHtpBackend,
                                soc_model=getattr(QcomChipset, SOC))
    finally:
        logging.disable(logging.NOTSET)
    default = _module_qconfig(vendor.WeightSpec(4))
    q.set_default_quant_config(default.quant_dtype, is_linear_per_channel=True,
                               act_observer=default.act_observer)
    return q


def sdk_status() -> vendor.SdkStatus:
    status = vendor.SdkStatus(SDK_NAME, SDK_VERSION, SDK_VAR, present=False)
    what = (f"download the {SDK_NAME} {SDK_VERSION} (the version executorch 1.5.1 expects; "
            f"{SDK_URL}), unpack it and set {SDK_VAR} to the directory holding {SDK_HTP_LIB}")
    root = os.environ.get(SDK_VAR, "")
    if not root:
        status.problem = f"the {SDK_NAME} is not installed ({SDK_VAR} is not set): {what}"
        return status
    lib = Path(root) / SDK_HTP_LIB
    if not lib.is_file():
        status.problem = (f"{SDK_VAR}={root} is not a valid SDK at {root} (no {SDK_HTP_LIB}): "
                          f"{what}")
        return status
    build, error = _sdk_build_id(lib)
    if build is None:
        status.problem = f"{SDK_VAR}={root} is not a valid SDK at {root} ({error}): {what}"
        return status
    status.present, status.details = True, {"root": root, "build_id": build}
    return status


def _sdk_build_id(lib: Path) -> tuple[str | None, str]:
    """The SDK build id from its HTP library, or (None, why). Asked in a child process: the
    backend's native adaptor aborts the whole process on a library it cannot load."""
    code = ("import sys\n"
            "from executorch.backends.qualcomm.python import PyQnnManagerAdaptor as A\n"
            "print(A.GetQnnSdkBuildId(sys.argv[1]))\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True,
                           text=True, timeout=SDK_QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"{lib} did not answer within {SDK_QUERY_TIMEOUT_S} s"
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        return None, f"{lib} cannot be loaded (exit status {r.returncode})"
    return lines[-1], ""


def compile_program(ep, inputs, dest: Path, sdk: vendor.SdkStatus) -> Path:
    """The quantized program -> HTP context binary in a .pte (needs the SDK)."""
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
    from executorch.backends.qualcomm.utils.utils import (
        generate_htp_compiler_spec, generate_qnn_executorch_compiler_spec,
        to_edge_transform_and_lower_to_qnn)

    try:
        specs = generate_qnn_executorch_compiler_spec(
            soc_model=getattr(QcomChipset, SOC),
            backend_options=generate_htp_compiler_spec(use_fp16=False))
        edge = to_edge_transform_and_lower_to_qnn(ep.module(), inputs, specs)
        program = edge.to_executorch()
    except Exception as e:
        raise EdgeError(f"{NAME}: the QNN compile with the SDK at {sdk.details['root']} "
                        f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        ) from e
    out = dest / "model.pte"
    out.write_bytes(program.buffer)
    return out


VENDOR = vendor.Vendor(target=NAME, fused_norm=True, block_weights=True,
                       quantizer=make_quantizer, sdk=sdk_status, compile=compile_program,
                       no_sdk_env={SDK_VAR: ""})


def stage(st):
    return vendor.run_stage(st, VENDOR)


# The stage scores the simulated program itself (export/targets/vendor.py): no artifact_logits.
TARGET = Target(NAME, stage, None, check_request)

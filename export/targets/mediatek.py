"""The mediatek target: MediaTek APU through ExecuTorch's NeuroPilot backend.

Everything up to the vendor compiler runs with the public code in the executorch wheel (see
export/targets/vendor.py): the static chunk program, ExecuTorch's NeuropilotQuantizer (precision A16W4:
16-bit activations x 4-bit per-channel weights for the transformer linears; A16W8 for the output
layer, the sensitive layer kept at 8 bits), calibration, and the simulated program scored against
the unquantized model. NeuropilotQuantizer has one precision for a whole graph; the output layer
(and any linear a recipe puts at 8 or 16 bits) is annotated first with the quantizer's own A16W8 /
A16W16 configuration, the rest by the quantizer itself. It has no weight groups: a recipe's group
sizes become per-channel scales (noted in the report).

Measured on SmolLM2-135M-Instruct (default plan, packaged evaluation text, 256-token windows):
simulated mean KLD 0.73, top-1 agreement 53 %, PPL 65.7 against 40.3 (4-bit weights with one
scale per output channel); with 16-bit weights mean KLD 0.034.

The compile needs the NeuroPilot Express SDK's Python packages mtk_converter and mtk_neuron
(licence-gated, from MediaTek's NeuroPilot portal). When both import, the program is compiled to
a .pte; otherwise the export ends with an error naming the packages, their versions and
MEDIATEK_SDK_ROOT (the unpacked SDK, which ExecuTorch's MediaTek build scripts also read, with
NEURON_BUFFER_ALLOCATOR_LIB=$MEDIATEK_SDK_ROOT/libneuron_buffer_allocator.so for the runtime).

ExecuTorch's `executorch.backends.mediatek` package imports the compiler packages in its
__init__; the quantizer itself needs only torch and torchao, so without the SDK its modules are
loaded from the package directory without running that __init__ (quantizer_module).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

from edge.errors import EdgeError

from . import Target, vendor

NAME = "mediatek"
SDK_NAME = "MediaTek NeuroPilot Express SDK"
SDK_VAR = "MEDIATEK_SDK_ROOT"
# The packages executorch 1.5.1's MediaTek backend imports to compile, at the versions its
# documentation (docs/source/backends-mediatek.md) installs; mtk_converter 8.13.0 is published
# for CPython 3.10.
SDK_PACKAGES = {"mtk_converter": "8.13.0", "mtk_neuron": "8.2.23"}
SDK_VERSION = ", ".join(f"{k} {v}" for k, v in SDK_PACKAGES.items())
SDK_PORTAL = "https://neuropilot.mediatek.com/resources/public/npexpress/en/docs/npexpress"
PLATFORM = "mt6989"  # Dimensity 9300, one of the backend's platform-config values
_PKG = "executorch.backends.mediatek"


def check_request(cfg, recipe) -> None:
    vendor.check_recipe(NAME, cfg, recipe)


def _sdk_importable() -> bool:
    return all(importlib.util.find_spec(p) is not None for p in SDK_PACKAGES)


def quantizer_module():
    """executorch.backends.mediatek.quantizer, with or without the compiler packages."""
    if _sdk_importable() or _PKG in sys.modules:
        return importlib.import_module(f"{_PKG}.quantizer")
    import executorch.backends

    # The package without its __init__ (which imports mtk_converter): a bare package module
    # over the same directory while the quantizer's modules load, removed after so that a later
    # `import executorch.backends.mediatek` still runs the real __init__.
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [str(Path(executorch.backends.__file__).parent / "mediatek")]
    pkg.__package__ = _PKG
    sys.modules[_PKG] = pkg
    try:
        return importlib.import_module(f"{_PKG}.quantizer")
    finally:
        del sys.modules[_PKG]


def make_quantizer(spec):
    """NeuropilotQuantizer at A16W4 with the linears `spec` puts at 8 / 16 bits annotated first
    with the quantizer's A16W8 / A16W16 configuration."""
    qmod = quantizer_module()
    # The quantizer's own linear annotator (its registry; the submodules load with the package)
    annotate_linear = qmod.annotator.OP_TO_ANNOTATOR[torch.ops.aten.linear.default]
    get_quant_config = qmod.qconfig.get_quant_config
    precision = {8: qmod.Precision.A16W8, 16: qmod.Precision.A16W16}

    class PlannedNeuropilotQuantizer(qmod.NeuropilotQuantizer):
        def annotate(self, model):
            for node, name in vendor.linear_nodes(model.graph, NAME):
                bits = spec(name).bits
                if bits != 4:
                    annotate_linear(node, get_quant_config(precision[bits], is_per_channel=True))
            return super().annotate(model)

    q = PlannedNeuropilotQuantizer()
    q.setup_precision(qmod.Precision.A16W4)
    return q


def _wheels(root: Path) -> dict[str, list[Path]]:
    """The SDK's wheels for each package, in the directory or one level below."""
    found = {}
    for pkg in SDK_PACKAGES:
        found[pkg] = sorted([*root.glob(f"{pkg}-*.whl"), *root.glob(f"*/{pkg}-*.whl")])
    return found


def sdk_status() -> vendor.SdkStatus:
    status = vendor.SdkStatus(SDK_NAME, SDK_VERSION, SDK_VAR, present=False)
    if _sdk_importable():
        versions = {}
        for p in SDK_PACKAGES:
            try:
                versions[p] = importlib.metadata.version(p)
            except importlib.metadata.PackageNotFoundError:
                versions[p] = "unknown"
        status.present, status.details = True, {"packages": versions}
        return status
    missing = " and ".join(p for p in SDK_PACKAGES
                           if importlib.util.find_spec(p) is None)
    how = (f"download the {SDK_NAME} ({SDK_VERSION}, as executorch 1.5.1 documents; "
           f"{SDK_PORTAL}), unpack it, set {SDK_VAR} to its directory and pip install its "
           "mtk_converter and mtk_neuron wheels into this Python")
    root = os.environ.get(SDK_VAR, "")
    if not root:
        status.problem = (f"the {SDK_NAME} is not installed ({missing} cannot be imported, "
                          f"{SDK_VAR} is not set): {how}")
        return status
    wheels = _wheels(Path(root)) if Path(root).is_dir() else {p: [] for p in SDK_PACKAGES}
    absent = [p for p, w in wheels.items() if not w]
    if absent:
        status.problem = (f"{SDK_VAR}={root} is not a valid SDK at {root} (no "
                          f"{' / '.join(f'{p}-*.whl' for p in absent)}): {how}")
        return status
    files = " ".join(str(w[-1]) for w in wheels.values())
    status.problem = (f"the {SDK_NAME} at {root} is not installed in this Python ({missing} "
                      f"cannot be imported): pip install {files}")
    return status


def compile_program(ep, inputs, dest: Path, sdk: vendor.SdkStatus) -> Path:
    """The quantized program -> NeuroPilot DLA inside a .pte (needs the SDK packages)."""
    from executorch.backends.mediatek import NeuropilotPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from executorch.exir.backend.compile_spec_schema import CompileSpec

    try:
        part = NeuropilotPartitioner([CompileSpec("platform-config", PLATFORM.encode())])
        edge = to_edge_transform_and_lower(
            ep, partitioner=[part], compile_config=EdgeCompileConfig(_check_ir_validity=False))
        program = edge.to_executorch()
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise EdgeError(f"{NAME}: the NeuroPilot compile ({sdk.details.get('packages')}) "
                        f"failed: {type(e).__name__}: {first}") from e
    out = dest / "model.pte"
    out.write_bytes(program.buffer)
    return out


VENDOR = vendor.Vendor(target=NAME, fused_norm=False, block_weights=False,
                       quantizer=make_quantizer, sdk=sdk_status, compile=compile_program)


def stage(st):
    return vendor.run_stage(st, VENDOR)


# The stage scores the simulated program itself (export/targets/vendor.py): no artifact_logits.
TARGET = Target(NAME, stage, None, check_request)

"""User-facing errors.

Every failure a user can cause (a bad file, a bad flag, a prompt too long) raises a subclass of
`EdgeError` whose message names the file / tensor / field / parameter at fault and says what to
do. The CLIs print that message on one line and exit non-zero; tracebacks only with --debug.
Anything else escaping is a bug.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the product reports to a user."""


class CheckpointError(EdgeError):
    """A checkpoint (HF dir, Meta dir, GGUF file) cannot be loaded as given."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class ArtifactError(EdgeError):
    """An exported artifact (edge bundle, .pte, .onnx) is corrupt, incomplete, of another format
    version, or inconsistent."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class ConfigError(EdgeError):
    """A model configuration is inconsistent or unsupported."""


class TokenizerError(EdgeError):
    """A tokenizer file is missing, malformed or does not match the model."""


class GenerationError(EdgeError):
    """A generation request is invalid (parameters, prompt length) or failed numerically."""


class InputError(GenerationError):
    """A task's input cannot be processed as asked (too many tokens, no room in the context,
    summaries that do not get shorter): the request's fault, not the model's."""


class MissingExtraError(EdgeError):
    """An optional dependency group is not installed."""

    def __init__(self, feature: str, extra: str, module: str):
        super().__init__(
            f"{feature} needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'llama-edge[{extra}]'"
        )


def require(module: str, feature: str, extra: str = "export"):
    """Import an optional module or raise MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # only a genuinely absent module is reported as missing
        if e.name is not None and module.split(".")[0] != e.name.split(".")[0]:
            raise
        raise MissingExtraError(feature, extra, module) from None

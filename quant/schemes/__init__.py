"""Quantization schemes: each a small module with a readable reference."""

from .activation import DynamicInt8Act
from .base import QuantError, QuantizedTensor
from .fp8 import FP8Weight
from .intx import IntWeight
from .kv import KVCacheInt8

WEIGHT_SCHEMES = {"int": IntWeight, "fp8": FP8Weight}

__all__ = ["DynamicInt8Act", "FP8Weight", "IntWeight", "KVCacheInt8", "QuantError",
           "QuantizedTensor", "WEIGHT_SCHEMES"]

"""Lets PyPI's CUDA torchvision import next to a CPU torch, inside thyme's vLLM environment only.

Installed by thyme (thyme_cli/models/serve/vllm_env.py) into that environment's site-packages, with a .pth
line that imports it at start-up, ONLY when ``import torchvision`` fails there: PyPI has no CPU
torchvision, and transformers' Qwen2-VL image processor (which vLLM imports for Qwen2.5-VL)
imports torchvision unconditionally. torchvision's compiled ops cannot load without CUDA torch;
its Python code then only fails on two unguarded ``register_fake`` calls (``torchvision::nms`` and
``::qnms``). Defining those operators' schemas before torchvision is imported lets the pure-torch parts (the v2
transforms the image processor uses) work. No installed file is changed; the image pipeline never
calls torchvision's compiled ops (nms, roi_align, ...), which stay unavailable.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

_KEEP: list[Any] = []


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            _define_ops()
        return None  # the normal finders import the real package


def _define_ops() -> None:
    torch: Any = importlib.import_module("torch")
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)


if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
    sys.meta_path.insert(0, _BeforeTorchvision())

"""A matplotlib backend for the worker: Agg rendering, and `plt.show()` saves the figures as images.

Selected with MPLBACKEND=module://thyme_cli.sandbox.jail.mpl_backend in the worker's environment, so
the model's usual `plt.show()` produces an image the host picks up from the step's output directory
(THYME_OUTPUT_DIR), the way a notebook would display it.
"""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def _free_path(directory: str, number: int) -> str:
    k = 0
    while True:
        name = f"figure_{number}.png" if k == 0 else f"figure_{number}_{k}.png"
        path = os.path.join(directory, name)
        if not os.path.lexists(path):
            return path
        k += 1


def show(*args: Any, **kwargs: Any) -> None:
    """Save every open figure into the step's output directory, then close them."""
    import matplotlib.pyplot as plt

    directory = os.environ.get("THYME_OUTPUT_DIR") or os.getcwd()
    for number in plt.get_fignums():
        figure = plt.figure(number)
        path = _free_path(directory, number)
        figure.savefig(path)
    plt.close("all")

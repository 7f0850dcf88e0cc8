"""The matplotlib backend of zmqruntime workers: Agg canvases, figures shown as PNG outputs.

Chosen by :mod:`zmqruntime.execution.capture` as soon as matplotlib is
imported in a worker (``matplotlib.use("module://zmqruntime.execution.mpl_backend")``),
so a remote task never tries to open a GUI window. Like matplotlib-inline,
``plt.show()`` sends every open figure as a ``display_data`` output and closes
it; figures still open when a task ends are sent too (by the capture).
"""

from __future__ import annotations

from typing import Any, Optional

from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def show(close: Optional[bool] = None, block: Any = None) -> None:
    """``plt.show()``: send the open figures (as PNG) and close them."""
    from .capture import show_figures

    show_figures()

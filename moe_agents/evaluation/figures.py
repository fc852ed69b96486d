"""Figures for the benchmark plots: matplotlib's object API on the Agg canvas, imported on first use.

No pyplot and no ``matplotlib.use``: a figure made here touches no global state, so plotting from the
library never changes the backend of an application that also uses matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["agg_figure"]


def agg_figure(
    width: float, height: float, *, layout: Literal["constrained", "tight"] = "constrained"
) -> Figure:
    """A new figure of ``width`` × ``height`` inches on the Agg canvas (its ``savefig`` writes PNGs).

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: install moe-agents[eval]") from exc
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig

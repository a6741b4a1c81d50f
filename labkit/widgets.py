"""ipywidgets explorers with a static fallback.

An explorer is three parts: a *pure* function from control values to data (tested headless),
a drawing function from that data to a matplotlib figure, and this module's :func:`explorer`,
which wires sliders to them when ipywidgets can render and otherwise draws one static figure
for the default values (nbval, GitHub's viewer, a PDF export, a plain terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from labkit import _args

STATIC_ENV = "LABKIT_STATIC_WIDGETS"


def widgets_available() -> bool:
    """True when ipywidgets imports, we run inside a Jupyter kernel, and static mode is not forced."""
    if _args.env_flag(STATIC_ENV):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and hasattr(shell, "kernel")


def explorer(draw: Callable[..., Any], controls: Mapping[str, Any], defaults: Mapping[str, Any], *,
             interactive: bool | None = None):
    """Show ``draw(**values)`` with a control per entry of ``controls``.

    ``controls`` maps argument names to ipywidgets widgets (or anything ``ipywidgets.interact``
    accepts, e.g. ``(1, 8, 1)``); ``defaults`` gives the value of each for the static figure.
    Returns the ipywidgets container when interactive, else ``draw``'s return value.
    """
    _args.function("draw", draw)
    _args.mapping("controls", controls, what="a dict of argument name -> control")
    _args.mapping("defaults", defaults, what="a dict of argument name -> default value")
    if interactive is not None:
        _args.boolean("interactive", interactive)
    if set(controls) != set(defaults):
        raise ValueError(f"controls {sorted(controls)} and defaults {sorted(defaults)} must name the same arguments")
    live = widgets_available() if interactive is None else interactive
    if not live:
        return draw(**defaults)
    import ipywidgets as W

    made = {}
    for name, ctrl in controls.items():
        if isinstance(ctrl, W.ValueWidget):
            ctrl.value = defaults[name]
            made[name] = ctrl
        else:
            made[name] = W.fixed(defaults[name]) if ctrl is None else ctrl
    return W.interactive(draw, **made)

"""The pool's shutdown signals: :class:`boefje_runtime.stop_signals.StopSignals`, under the name the
supervisor knows it by.

One class counts stop signals for both modes (stop_signals.py); what a count means for the pool
(the first drains, the second skips the wait) is decided in shutdown.py.
"""

from __future__ import annotations

from ..stop_signals import STOP_SIGNALS as SHUTDOWN_SIGNALS
from ..stop_signals import StopSignals as ShutdownSignals

__all__ = ["SHUTDOWN_SIGNALS", "ShutdownSignals"]

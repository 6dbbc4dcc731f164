"""optuna-dashboard on a run's study: the trials, their params, the history and importances, live.

``autotl dashboard RUN_DIR`` serves the study's storage (the run folder's
``study.db``, or ``--storage``) with optuna-dashboard's own server, and the
run's artifact store beside it, so the dashboard lists each trial's stored
layers.  It reads the storage as it is: a search may run meanwhile.
"""

from __future__ import annotations

from typing import Any, Optional

from autotl._extras import require

__all__ = ["serve", "require_dashboard"]


def require_dashboard() -> None:
    """One line naming the ``autotl[dashboard]`` extra when optuna-dashboard is missing."""
    require("dashboard", "autotl dashboard")


def serve(
    storage_url: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifact_store: Optional[Any] = None,
) -> None:
    """Serve the study at ``storage_url`` with optuna-dashboard on ``host:port`` until interrupted."""
    require_dashboard()
    import optuna_dashboard

    optuna_dashboard.run_server(storage_url, host=host, port=port, artifact_store=artifact_store)

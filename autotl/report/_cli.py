"""``autotl report RUN_DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autotl.report._write import write_report


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="write report.html, report.md and report.json for a run",
                              description="Summarise a run folder's study: leaderboard, learning curves, the search, the best model on the validation set, lineage. Safe while the search is still running.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite in the run folder)")
    p.add_argument("--study-name", default="autotl", help="study name in the storage (default: autotl)")
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from autotl.cli import _quiet_tensorflow  # autotl.cli imports this module: import it when called

    _quiet_tensorflow()
    paths = write_report(Path(args.run), args.storage, args.study_name)
    for key in ("html", "md", "json"):
        print(paths[key])
    return 0

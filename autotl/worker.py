"""``python -m autotl.worker CONFIG INDEX``: one extra worker of a search started with ``workers`` > 1.

``autotl.search(..., workers=N)`` writes its options (``autotl.SearchOptions`` as JSON, with the
space and trial budget it resolved, and its session) to ``RUN_DIR/logs/worker-config.json`` and
starts N-1 of these; each joins the same study and logs to ``RUN_DIR/logs/worker-I.log``.
Ctrl-C behaves as in ``autotl search``: once finishes the running trial, twice stops at once.
"""

from __future__ import annotations

import sys

from autotl.errors import AutotlError


def main(argv: list[str] | None = None) -> int:
    from autotl.api import run_worker
    from autotl.ui import CtrlC, quiet_tensorflow

    config, index = (argv if argv is not None else sys.argv[1:])[:2]
    quiet_tensorflow()
    presses = CtrlC(lambda msg: print(msg, flush=True))
    try:
        with presses:
            run_worker(config, int(index), should_stop=presses.pressed)
    except AutotlError as exc:
        print(f"autotl: error: {exc}", flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 130 if presses.pressed() else 0


if __name__ == "__main__":
    sys.exit(main())

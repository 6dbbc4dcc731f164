"""Property-based tests (hypothesis): whatever a user or a plugin gives, autotl answers in one line, never a traceback.

* a search space YAML, mutated anywhere (fields deleted, added, set to any
  value), either loads into a space a study can run (its sampler and every
  parameter's distribution can be made), or is refused with one line;
* command-line arguments drawn from autotl's own options, with good and bad
  values, end with an exit code and at most one error line (after warnings);
* a plugin's hook returning anything at all is either a list of valid specs
  or one line naming the plugin.

Examples are bounded (``max_examples``) to keep this module to seconds; the
subprocess variant is marked slow.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import TINY_SPACE, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotl.errors import PluginError, UsageError

FAST = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

BASE_SPACE: dict[str, Any] = {
    **yaml.safe_load(TINY_SPACE),
    "augmentation": {"enabled": False, "views": 2, "flip": True, "rotation": 0.05, "zoom": 0.1},
    "screening": {"trials": 2, "finalists": 1},
    "sampler": "tpe",
    "objectives": ["accuracy"],
    "seed": 0,
    "val_fraction": 0.25,
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a nested dict (list items included), for mutations to aim at."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _like(value: Any) -> Any:
    """Values of the same kind as ``value`` (a nearby mistake), or anything at all (a wild one)."""
    if isinstance(value, bool):
        same: Any = st.booleans()
    elif isinstance(value, int):
        same = st.integers(min_value=-(2**64), max_value=2**64)
    elif isinstance(value, float):
        same = st.floats(allow_nan=True, allow_infinity=True)
    elif isinstance(value, str):
        same = st.text(max_size=12)
    elif isinstance(value, list):
        same = st.lists(scalars, max_size=3)
    else:
        same = values
    return st.one_of(same, same, values)


@st.composite
def mutated_spaces(draw: Any) -> dict[str, Any]:
    import copy

    space = copy.deepcopy(BASE_SPACE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(space)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        *parents, last = path
        node = space
        for p in parents:
            node = node[p]
        action = draw(st.sampled_from(["set", "delete", "add"]))
        if action == "delete" and isinstance(node, dict):
            del node[last]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=8))] = draw(values)
        else:
            node[last] = draw(_like(node[last]))
    return space


class _Recorder:
    """A trial that makes Optuna's real distribution for each parameter it is asked for."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        from optuna.distributions import CategoricalDistribution

        CategoricalDistribution(list(choices))
        return choices[0]

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        from optuna.distributions import FloatDistribution

        assert math.isfinite(low) and math.isfinite(high), (name, low, high)
        FloatDistribution(low, high, log=log)
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        from optuna.distributions import IntDistribution

        IntDistribution(low, high)
        return low


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text.strip() and "\n" not in text, repr(text)


@FAST
@given(space=mutated_spaces(), screen=st.one_of(st.none(), st.integers(-3, 5)))
def test_a_mutated_space_loads_into_a_runnable_space_or_is_one_line(
    tmp_path: Path, space: dict[str, Any], screen: Any
) -> None:
    from autotl.engine.samplers import make_sampler
    from autotl.engine.space import apply_screening, load_space, trial_params

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    try:
        loaded, _ = load_space(path)
        loaded = apply_screening(loaded, screen, None)
    except UsageError as exc:
        _one_line(exc)
        return
    for stage in (False, True):
        trial_params(_Recorder(), loaded, screen=stage)
    for offset in (0, 1000 + 17):  # a new study's first worker; a resumed study's second worker
        make_sampler(loaded.sampler, loaded.seed + offset, len(loaded.objectives))


@FAST
@given(text=st.text(max_size=200))
def test_any_text_as_a_space_file_loads_or_is_one_line(tmp_path: Path, text: str) -> None:
    from autotl.engine.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(UsageError):
        load_space(path)
        return
    try:
        load_space(path)
    except UsageError as exc:
        _one_line(exc)


# --- command-line arguments -------------------------------------------------------------------

#: Each command's options (a few shared ones too), so most drawn command lines get past argparse.
OPTIONS = {
    "search": [
        "--trials", "--max-failures", "--workers", "--heartbeat", "--keep-models", "--screen",
        "--finalists", "--timeout", "--space", "--backbone", "--out", "--storage", "--weights",
        "--weights-dir", "--plugin", "--engine", "--tuner", "--gpus", "--sample", "--study-name",
    ],
    "predict": [],
    "plugins": ["--plugin", "--weights", "--weights-dir"],
    "report": ["--storage", "--study-name"],
    "lineage": ["--storage", "--json"],
    "export": [
        "--trial", "--format", "--quantize", "--out", "--data", "--storage", "--study-name",
        "--plugin", "--weights", "--weights-dir", "--mlflow",
    ],
    "mlflow": ["--experiment", "--model-name", "--storage", "--study-name"],
    "dashboard": ["--port", "--host", "--storage", "--study-name"],
}  # fmt: skip
POSITIONALS = {
    "search": 1, "predict": 3, "plugins": 2, "report": 1, "lineage": 1, "export": 1, "mlflow": 2,
    "dashboard": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def junk_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Paths a user might mistype: missing, a file, an empty folder, a damaged study, a text 'image'."""
    root = tmp_path_factory.mktemp("junk")
    (root / "empty").mkdir()
    (root / "damaged").mkdir()
    (root / "damaged" / "study.db").write_bytes(b"\x00" * 512)
    (root / "notes.txt").write_text("not an image, not a space")
    return [
        str(root / "missing"),
        str(root / "empty"),
        str(root / "damaged"),
        str(root / "notes.txt"),
    ]


def argv_lists(paths: list[str]) -> Any:
    """``[command, positionals..., --option value ...]``, now and then with a stray token."""
    value = st.one_of(
        st.sampled_from([*paths, "none", "imagenet", "0", "-1", "3", "nan", "1e9", "x,y", ""]),
        st.integers(-5, 10**12).map(str),
        st.text(alphabet="abc-_.,0123456789", max_size=6),
        st.sampled_from(["faulty.returns_none", "no_such_plugin", "check", "list", "keras,tflite"]),
    )

    @st.composite
    def argv(draw: Any) -> list[str]:
        command = draw(st.sampled_from([*OPTIONS, "serve", ""]))
        args = [command] if command else []
        args += draw(st.lists(value, max_size=POSITIONALS.get(command, 1)))
        for option in draw(
            st.lists(st.sampled_from(OPTIONS.get(command) or ["--help"]), max_size=4)
        ):
            args += [option] if option in ("--json", "--help") else [option, draw(value)]
        if draw(st.integers(0, 9)) == 0:
            args.insert(draw(st.integers(0, len(args))), draw(value))
        return args

    return argv()


def _safe(argv: list[str]) -> bool:
    """Leave out what would legitimately run for minutes: a real search, building a backbone."""
    return "--sample" not in argv[:-1] or argv[argv.index("--sample") + 1] != "digits"


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_command_line_ends_with_an_exit_code_and_at_most_one_error_line(
    data: Any, junk_paths: list[str]
) -> None:
    from autotl.cli import main

    argv = data.draw(argv_lists(junk_paths).filter(_safe))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help and --version (0) or a usage error (2)
            code = exc.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert code in (0, 1, 2), (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue()
    errors = [line for line in lines if line.startswith("autotl: error: ")]
    if code == 2:
        assert len(errors) == 1 and lines[-1] == errors[0], (argv, lines)
        assert all(line.startswith("warning: ") for line in lines[:-1]), (argv, lines)
    else:
        assert not errors, (argv, lines)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_a_command_line_through_a_subprocess_is_one_line(data: Any, junk_paths: list[str]) -> None:
    argv = data.draw(argv_lists(junk_paths).filter(_safe))
    proc = run_cli(*argv, timeout=300)
    assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, (argv, proc.stderr)
    if proc.returncode == 2:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("autotl: error: ") and all(
            line.startswith("warning: ") for line in lines[:-1]
        ), (argv, lines)


# --- what a plugin's hook may return ----------------------------------------------------------


def _build(input_shape: Any, weights: Any) -> Any:  # never called: registration does not build
    raise AssertionError("not called")


@st.composite
def specs(draw: Any) -> Any:
    from autotl import BackboneSpec, Preprocessing

    def either(good: Any, bad: Any) -> Any:
        return st.one_of(st.just(good), bad)

    return BackboneSpec(
        name=draw(either("prop_net", st.one_of(st.text(max_size=8), st.integers(), st.none()))),
        build=draw(st.sampled_from([_build, None, 3, "build"])),
        input_size=draw(
            either((32, 32), values | st.tuples(st.integers(-5, 100), st.integers(-5, 100)))
        ),
        preprocessing=draw(
            st.sampled_from(
                [Preprocessing.tf(), Preprocessing("tf", channel_order="XYZ"), "tf", None]
            )
        ),
        block_pattern=draw(
            either(r"_add$", st.one_of(st.text(max_size=6), st.none(), st.integers()))
        ),
        preprocess_input=draw(st.sampled_from([None, abs, "abs"])),
        input_sizes=draw(either((), values)),
        weights_file=draw(either(None, st.one_of(st.text(max_size=12), st.integers()))),
        weights_sha256=draw(either(None, st.one_of(st.text(max_size=64), st.integers()))),
        downloadable=draw(either(True, scalars)),
    )


returns = st.one_of(
    values,
    st.lists(st.one_of(specs(), scalars), max_size=3),
    st.tuples(specs()),
    specs(),
    st.builds(lambda xs: (x for x in xs), st.lists(specs(), max_size=2)),
)


@FAST
@given(returned=returns)
def test_whatever_a_hook_returns_is_valid_specs_or_one_line_naming_the_plugin(
    returned: Any,
) -> None:
    from autotl import hookimpl
    from autotl.backbones.registry import get_registry

    module = types.ModuleType("prop_plugin")
    module.autotl_backbones = hookimpl(lambda: returned)
    sys.modules["prop_plugin"] = module
    try:
        registry = get_registry(["prop_plugin"], autoload=False)
    except PluginError as exc:
        _one_line(exc)
        assert "prop_plugin" in str(exc)
        return
    finally:
        del sys.modules["prop_plugin"]
    mine = [s for s in registry.backbones.values() if s.plugin == "prop_plugin"]
    assert all(s.validate() == [] for s in mine)


@FAST
@given(spec=specs())
def test_validate_never_raises(spec: Any) -> None:
    problems = spec.validate()
    assert isinstance(problems, list) and all(
        isinstance(p, str) and "\n" not in p for p in problems
    )

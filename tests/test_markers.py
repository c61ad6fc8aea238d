"""The fast subset (`python -m pytest -m "not slow"`) cannot grow a whole study back into it.

A test that runs `autotune tune` through the CLI helpers (`run_cli("tune", ...)`,
`run_cli(["tune", ...])`, `run_module("tune", ...)`) runs a whole study in subprocesses, so it must be
marked `slow`: on the test function, its class, or the module's `pytestmark`. A fixture or helper
that runs one makes every test in the module that uses it (as a parameter or by calling it) a
whole-study test too. The check reads the tests' source (ast), not what a run happened to collect.

Two kinds of test are left out: those marked `gpu` (they skip without CUDA and run on purpose with
`-m gpu`), and the few named in REFUSED_BEFORE_ANY_STUDY below, which call `tune` only for a one-line
error printed before any study starts (about a second each), and so belong in the fast subset.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
CLI_HELPERS = {"run_cli", "run_module"}

# "file::function" of tests that call `tune` for a refusal before any study (no trial, no worker).
REFUSED_BEFORE_ANY_STUDY = {
    "test_cli_errors.py::test_missing_model_path",
    "test_cli_errors.py::test_unreadable_model_config",
    "test_cli_errors.py::test_unknown_option",
    "test_cli_errors.py::test_vision_knob_on_a_text_only_model",
    "test_cli_errors.py::test_image_data_for_a_text_only_model",
    "test_cli_errors.py::test_reranker_without_yes_no_tokens",
    "test_cli_errors.py::test_unknown_kind_names_the_allowed_ones",
    "test_cli_main.py::test_python_dash_m_autotune_bad_input_is_one_line",
    "test_data_bounds.py::test_cli_refuses_a_prompt_longer_than_the_space_allows",
    "test_data_bounds.py::test_cli_refuses_outside_images_and_allow_data_outside_reaches_the_quality_setup",
    "test_samplers.py::test_unknown_sampler_is_a_one_line_error",
    "test_scaleout.py::test_gpus_refuses_sqlite_and_needs_gpus",
    "test_objectives.py::test_cli_refuses_goodput_without_an_slo_in_one_line_and_writes_nothing",
    "test_slo.py::test_cli_refuses_a_bad_slo_with_one_line_and_no_output",
    "test_study_quality.py::test_bad_quality_options",
    "test_study_quality.py::test_label_metric_on_unlabelled_data",
    "test_study_quality.py::test_malformed_validation_set",
    "test_study_quality.py::test_quality_with_random_weights",
    "test_study_quality.py::test_reranker_refuses_a_prompt_set",
    "test_study_robustness.py::test_missing_embedded_model_package_is_refused_before_the_study",
    "test_workload_measure.py::test_cli_refuses_a_bad_workload_with_one_line_and_no_output",
}


def _is_mark(expr: ast.expr, name: str) -> bool:
    """`expr` is `pytest.mark.NAME`, `pytest.mark.NAME(...)`, or a list/tuple holding one of them."""
    if isinstance(expr, (ast.List, ast.Tuple)):
        return any(_is_mark(e, name) for e in expr.elts)
    if isinstance(expr, ast.Call):
        expr = expr.func
    return (isinstance(expr, ast.Attribute) and expr.attr == name and isinstance(expr.value, ast.Attribute)
            and expr.value.attr == "mark")


def _pytestmark(body: list[ast.stmt], name: str) -> bool:
    return any(isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
               and _is_mark(node.value, name) for node in body)


def _starts_with_tune(expr: ast.expr, tune_lists: set[str]) -> bool:
    """`expr` is "tune", a list/tuple starting with "tune", or (starred or not) a name bound to such a list."""
    if isinstance(expr, ast.Starred):
        expr = expr.value
    if isinstance(expr, ast.Name):
        return expr.id in tune_lists
    if isinstance(expr, (ast.List, ast.Tuple)):
        return bool(expr.elts) and _starts_with_tune(expr.elts[0], tune_lists)
    return isinstance(expr, ast.Constant) and expr.value == "tune"


def _calls_tune(function: ast.AST) -> bool:
    """`function` calls a CLI helper with `tune` first: `run_cli("tune", ...)`, `run_cli(["tune", ...])`, or
    through a local list, `args = ("tune", ...)` then `run_cli(*args, ...)` / `run_cli([*args, ...])`."""
    tune_lists = set()
    for node in ast.walk(function):
        if (isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple))
                and _starts_with_tune(node.value, set())):
            tune_lists |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and node.args:
            callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if callee in CLI_HELPERS and _starts_with_tune(node.args[0], tune_lists):
                return True
    return False


def _uses(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The names a function takes as parameters (fixtures) or reads in its body (helpers it calls)."""
    args = function.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    return names | {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}


def unmarked_whole_study_tests(source: str, filename: str = "<test>") -> list[str]:
    """`file::[Class::]test` of every test that runs `tune` (itself or through a module-level fixture or
    helper) and is marked neither slow nor gpu, nor named in REFUSED_BEFORE_ANY_STUDY."""
    tree = ast.parse(source)
    module_marks = {m for m in ("slow", "gpu") if _pytestmark(tree.body, m)}
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    # Module-level fixtures and helpers that run a study, directly or through one another.
    runs_study = {name for name, f in functions.items() if not name.startswith("test") and _calls_tune(f)}
    while True:
        more = {name for name, f in functions.items()
                if not name.startswith("test") and name not in runs_study and _uses(f) & runs_study}
        if not more:
            break
        runs_study |= more

    tests: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, set[str]]] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            tests.append((node.name, node, set()))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            class_marks = {m for m in ("slow", "gpu")
                           if _pytestmark(node.body, m) or any(_is_mark(d, m) for d in node.decorator_list)}
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    tests.append((f"{node.name}::{item.name}", item, class_marks))

    found = []
    for name, function, class_marks in tests:
        marks = module_marks | class_marks | {m for m in ("slow", "gpu") if any(_is_mark(d, m) for d in function.decorator_list)}
        if marks or f"{filename}::{name}" in REFUSED_BEFORE_ANY_STUDY:
            continue
        if _calls_tune(function) or _uses(function) & runs_study:
            found.append(f"{filename}::{name}")
    return found


def _test_files() -> list[Path]:
    return sorted(TESTS.glob("test_*.py"))


def test_every_whole_study_test_is_marked_slow() -> None:
    unmarked = [name for path in _test_files() for name in unmarked_whole_study_tests(path.read_text(), path.name)]
    assert not unmarked, ("these tests run `autotune tune` (a whole study) but are not marked slow; add @pytest.mark.slow "
                          f"(or, for a refusal before any study, name them in REFUSED_BEFORE_ANY_STUDY): {unmarked}")


def test_the_fast_refusals_named_still_call_tune_unmarked() -> None:
    """Every name in REFUSED_BEFORE_ANY_STUDY is a test that exists and calls `tune` itself, so the list cannot go stale."""
    calling = set()
    for path in _test_files():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _calls_tune(node):
                calling.add(f"{path.name}::{node.name}")
    assert REFUSED_BEFORE_ANY_STUDY <= calling, sorted(REFUSED_BEFORE_ANY_STUDY - calling)


def test_the_check_finds_an_unmarked_study_and_accepts_every_way_of_marking_one() -> None:
    unmarked = '''
import pytest
from tests.conftest import run_cli

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return run_cli("tune", "--trials", "2")

def _study_via_helper():
    return study(None)

def test_runs_a_study():
    run_cli("tune", "--trials", "4")

def test_runs_a_study_from_a_list(tmp_path):
    run_cli(["tune", "--trials", "4"], tmp_path)

def test_runs_a_study_from_a_local_list():
    common = ("tune", "--out", "out")
    run_cli(*common, "--trials", "4")

def test_uses_the_study_fixture(study):
    assert study

def test_uses_a_helper():
    _study_via_helper()

def test_shows_only():
    run_cli("show", "out")

class TestStudies:
    def test_in_a_class(self):
        run_cli("tune")
'''
    assert unmarked_whole_study_tests(unmarked, "example.py") == [
        "example.py::test_runs_a_study", "example.py::test_runs_a_study_from_a_list",
        "example.py::test_runs_a_study_from_a_local_list", "example.py::test_uses_the_study_fixture",
        "example.py::test_uses_a_helper", "example.py::TestStudies::test_in_a_class",
    ]

    by_decorator = '''
import pytest

@pytest.mark.slow
def test_runs_a_study():
    run_cli("tune")

@pytest.mark.gpu
def test_on_a_gpu():
    run_cli("tune")

@pytest.mark.slow
class TestStudies:
    def test_in_a_class(self):
        run_cli("tune")

class TestMore:
    pytestmark = pytest.mark.slow
    def test_in_a_class(self):
        run_cli("tune")
'''
    assert unmarked_whole_study_tests(by_decorator, "example.py") == []
    for module_mark in ("pytestmark = pytest.mark.slow", "pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('x')]"):
        assert unmarked_whole_study_tests(f"import pytest\n{module_mark}\n{unmarked}", "example.py") == []

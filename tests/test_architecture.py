"""The one-way data flow, enforced by reading every module's imports (top-level and inside functions).

raw (``dataset``) -> fingerprint/plans/preprocessed (``preprocessing``) -> checkpoints (``training``,
``pretraining``) -> predictions (``inference``) -> scores (``evaluation``). A stage module may import its own
stage and earlier ones; shared modules (``networks``, ``utils``, ``plans``, ``paths``, ``imageio``,
``postprocessing``, ...) import no stage at all. Orchestrators may import anything: ``api`` (which runs stages in a
row), the ``cli`` modules (thin wrappers over it) and ``demo``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "smitunet"
STAGES = {"dataset": 0, "preprocessing": 1, "training": 2, "pretraining": 2, "inference": 3, "evaluation": 4}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("smitunet.")}


def _stage(module: str) -> str | None:
    part = module.split(".")[1]
    return part if part in STAGES else None


def _is_orchestrator(rel: Path) -> bool:
    return rel.name == "cli.py" or rel.as_posix() in ("api.py", "demo.py")


def test_no_stage_imports_a_later_stage_and_shared_modules_import_none():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if _is_orchestrator(rel):
            continue
        own = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in STAGES else None
        for module in sorted(_imports(path)):
            stage = _stage(module)
            if stage is None:
                continue
            if own is None:
                violations.append(f"{rel}: shared module imports stage {stage} ({module})")
            elif STAGES[stage] > STAGES[own]:
                violations.append(f"{rel}: stage {own} imports the later stage {stage} ({module})")
    assert not violations, "\n".join(violations)


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from smitunet.inference.predictor import Predictor\n")
    assert "smitunet.inference.predictor" in _imports(probe)


def test_tests_import_shared_helpers_from_support_only():
    """Helpers shared between tests live in tests/support; no test imports another test module or conftest."""
    tests = PACKAGE.parent / "tests"
    offenders = []
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                    node.module.startswith(("test_", "tests.")) or node.module == "conftest"):
                offenders.append(f"{path.relative_to(tests)}: from {node.module} import ...")
    assert not offenders, "\n".join(offenders)

"""No code path deserialises executable data or runs a shell: pickle, eval/exec, shell=True,
torch.load without weights_only, np.load(allow_pickle=True), yaml.load are refused in the package
(weights are safetensors; the reader of capture folders uses np.load(allow_pickle=False))."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "rvg_ros").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in UNSAFE_MODULES for n in names):
                found.append(f"{where}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where}: {name}()")
        if _is_true(_keyword(node, "shell")) or (owner == "os" and name in ("system", "popen")):
            found.append(f"{where}: shell")
        if owner == "torch" and name == "load" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if owner == "np" and name == "load" and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{where}: np.load(allow_pickle=True)")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
            found.append(f"{where}: yaml.{name} (use yaml.safe_load)")
    return found


def test_no_unsafe_deserialisation_or_shell() -> None:
    assert len(SOURCES) > 40
    problems = [p for path in SOURCES for p in _problems(path)]
    assert not problems, problems


def test_the_checker_catches_what_it_is_meant_to(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nimport torch\nimport subprocess\n"
        "eval('1')\nsubprocess.run('ls', shell=True)\ntorch.load('w.pt')\n"
        "np.load('x.npy', allow_pickle=True)\ntorch.load('w.pt', weights_only=True)\n"
    )
    assert len(_problems(bad)) == 5, _problems(bad)

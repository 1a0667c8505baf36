"""The package as users install it: bundled recipes by name, the wheel, `python -m tfopt`."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(args, cwd, **kw):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def test_a_bundled_recipe_is_found_by_its_bare_name_from_any_folder(tmp_path):
    proc = run([sys.executable, "-m", "tfopt", "validate", "quickstart"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("quickstart: OK (quickstart: 7 layers, data digits")


def test_a_missing_file_path_is_not_taken_for_a_bundled_name(tmp_path):
    proc = run([sys.executable, "-m", "tfopt", "validate", "quickstart.yaml"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "recipe file not found; a bundled recipe has this name:" in proc.stderr


def test_python_m_tfopt_prints_the_help_without_tensorflow(tmp_path):
    proc = run([sys.executable, "-X", "importtime", "-m", "tfopt", "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "Usage: python -m tfopt" in proc.stdout or "Usage: tfopt" in proc.stdout
    assert " tensorflow" not in proc.stderr  # -X importtime lists every module imported


@pytest.mark.slow
def test_the_wheel_carries_the_recipes_and_trains_one_by_name_when_installed(tmp_path):
    wheels = tmp_path / "wheels"
    proc = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                str(ROOT)], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = wheels.glob("tfopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    bundled = sorted(p.name for p in (ROOT / "tfopt" / "recipes").glob("*.yaml"))
    assert bundled and all(f"tfopt/recipes/{n}" in names for n in bundled)
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path).returncode == 0
    purelib = Path(run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       cwd=tmp_path).stdout.strip())
    # the dependencies of this environment, not tfopt's sources: the installed wheel is what runs
    deps = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_path("purelib")]
    (purelib / "deps.pth").write_text("\n".join(deps) + "\n")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(purelib)
    python = str(venv / "bin" / "python")
    where = run([python, "-c", "import tfopt; print(tfopt.__file__)"], cwd=tmp_path)
    assert where.stdout.startswith(str(purelib)), where.stdout + where.stderr
    listed = run([python, "-m", "tfopt", "recipes"], cwd=tmp_path)
    assert listed.returncode == 0 and all(Path(n).stem in listed.stdout for n in bundled), listed.stdout
    fit = run([python, "-m", "tfopt", "fit", "quickstart", "--set", "train.epochs=1", "--output", str(tmp_path / "runs")],
              cwd=tmp_path, timeout=600)
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert (tmp_path / "runs" / "quickstart" / "model.keras").is_file()


def _requirements():
    """``{name: requirement}`` of pyproject.toml's runtime dependencies."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def _pins(name):
    lines = (ROOT / name).read_text().splitlines()
    pairs = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {n.strip().lower().replace("_", "-"): v.strip() for n, v in pairs}


def test_each_dependencys_lower_bound_is_what_make_test_lowest_installs_and_ci_pins_lie_in_range():
    reqs, lowest, ci = _requirements(), _pins("constraints-lowest.txt"), _pins("constraints.txt")
    assert sorted(lowest) == sorted(reqs)
    for name, req in reqs.items():
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{name} has no single lower bound"
        assert req.specifier.contains(lowest[name]), f"{name} {lowest[name]} not in {req.specifier}"
        assert not any(req.specifier.contains(v) for v in _just_below(lowest[name])), name
        assert req.specifier.contains(ci[name]), f"CI pins {name} {ci[name]}, outside {req.specifier}"


def _just_below(version):
    """Versions just below ``version`` (one less in its last part), which the range must exclude."""
    parts = [int(p) for p in version.split(".")]
    out = []
    for i in range(len(parts)):
        if parts[i] > 0:
            out.append(".".join(str(p) for p in parts[:i] + [parts[i] - 1] + [99] * (len(parts) - i - 1)))
    return out[-1:]


def test_every_third_party_module_tfopt_imports_is_a_declared_dependency():
    import ast

    declared = set(_requirements()) | {"tensorflow_model_optimization", "keras_tuner", "yaml", "pil", "sklearn",
                                       "tf_keras", "ai_edge_litert"}
    declared = {d.replace("-", "_") for d in declared}
    stdlib = set(sys.stdlib_module_names)
    found = {}
    for path in (ROOT / "tfopt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for n in names:
                top = n.split(".")[0]
                if top not in stdlib and top != "tfopt":
                    found.setdefault(top.lower(), path.relative_to(ROOT))
    assert {m: p for m, p in found.items() if m not in declared} == {}

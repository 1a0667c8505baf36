"""The documentation builds without a warning, and the README stays a front page."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_is_a_front_page_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    assert "make demo" in lines[5] or any("make demo" in line for line in lines[:10])
    assert any(line.startswith("make test") for line in lines[:10])


def test_mkdocs_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools are in the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    # the reference is generated from the commands, the step commands of the registry included
    from tfopt.cli.reference import reference

    for name in reference.commands:
        assert f'id="tfopt-{name}"' in cli, name
    assert "--sparsity" in cli and "--per-layer" in cli
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "tfopt.api.prune" in api or "prune" in api


def test_every_public_function_has_google_style_args_returns_and_raises_where_due():
    import inspect

    import tfopt

    missing = []
    for name in tfopt.__all__:
        obj = getattr(tfopt, name)
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        params = [p for p in inspect.signature(obj).parameters.values() if p.kind is not p.VAR_KEYWORD]
        for section, due in (("Args:", bool(params)), ("Returns:", True)):
            if due and f"\n{section}\n" not in f"\n{doc}\n":
                missing.append(f"{name}: {section}")
        for p in params:
            if due and f"{p.name}:" not in doc and f"{p.name} (" not in doc:
                missing.append(f"{name}: Args {p.name}")
    assert missing == []

"""The import rules between packages (DESIGN.md: any -> formats, any -> kernels,
align -> dit, infer -> vae; nothing else) hold for the real tree, and the check catches
a violation."""

from __future__ import annotations

import shutil
from pathlib import Path

import check_imports


def test_repository_obeys_import_rules() -> None:
    assert check_imports.violations() == []


def _copy_tree(repo_root: Path, dst: Path) -> None:
    for pkg in check_imports.PACKAGES:
        src = repo_root / "packages" / f"mugv-{pkg}"
        (dst / "packages" / f"mugv-{pkg}" / "src").mkdir(parents=True)
        shutil.copy(src / "pyproject.toml", dst / "packages" / f"mugv-{pkg}" / "pyproject.toml")


def test_check_catches_forbidden_and_undeclared_imports(repo_root: Path, tmp_path: Path) -> None:
    _copy_tree(repo_root, tmp_path)
    data_src = tmp_path / "packages" / "mugv-data" / "src" / "mugv_data"
    data_src.mkdir()
    (data_src / "bad.py").write_text("import os\nfrom mugv_vae.model import X\n")
    infer_src = tmp_path / "packages" / "mugv-infer" / "src" / "mugv_infer"
    infer_src.mkdir()
    (infer_src / "ok.py").write_text("import mugv_vae\nimport mugv_formats.clips\n")
    formats_src = tmp_path / "packages" / "mugv-formats" / "src" / "mugv_formats"
    formats_src.mkdir()
    (formats_src / "x.py").write_text("def f():\n    import mugv_kernels\n")
    problems = check_imports.violations(tmp_path)
    assert any("mugv_data/bad.py:2: mugv-data may not import mugv_vae" in p for p in problems)
    assert any(
        "mugv_formats/x.py:2: mugv-formats may not import mugv_kernels" in p for p in problems
    )
    assert not any("mugv_infer" in p for p in problems)
    # an allowed import that the pyproject does not declare is reported too
    (tmp_path / "packages" / "mugv-infer" / "pyproject.toml").write_text(
        '[project]\nname = "mugv-infer"\ndependencies = ["mugv-formats>=1,<2"]\n'
    )
    problems = check_imports.violations(tmp_path)
    assert any("imports mugv_vae but does not declare mugv-vae" in p for p in problems)


def test_umbrella_may_import_stages_and_no_stage_imports_it(
    repo_root: Path, tmp_path: Path
) -> None:
    _copy_tree(repo_root, tmp_path)
    umbrella = tmp_path / "packages" / "mugv"
    (umbrella / "src" / "mugv").mkdir(parents=True)
    shutil.copy(repo_root / "packages" / "mugv" / "pyproject.toml", umbrella / "pyproject.toml")
    (umbrella / "src" / "mugv" / "ok.py").write_text("import mugv_dit\nimport mugv_infer.run\n")
    vae_src = tmp_path / "packages" / "mugv-vae" / "src" / "mugv_vae"
    vae_src.mkdir()
    (vae_src / "bad.py").write_text("from mugv.config import load_config\n")
    problems = check_imports.violations(tmp_path)
    assert problems == [
        "packages/mugv-vae/src/mugv_vae/bad.py:1: mugv-vae may not import the umbrella mugv"
    ]

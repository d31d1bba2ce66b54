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


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_check_scans_tests_and_benchmarks_and_dynamic_imports(
    repo_root: Path, tmp_path: Path
) -> None:
    _copy_tree(repo_root, tmp_path)
    _write(tmp_path, "packages/mugv-data/tests/test_x.py", "from mugv_vae import model\n")
    _write(
        tmp_path,
        "packages/mugv-vae/benchmarks/bench_x.py",
        "import importlib\n\ndef f():\n    return importlib.import_module('mugv_dit.model')\n",
    )
    _write(tmp_path, "packages/mugv-infer/tests/test_y.py", "x = __import__('mugv_align')\n")
    # a package's own test helpers are its own; another package's mugv_* helpers are not
    _write(tmp_path, "packages/mugv-dit/tests/mugv_dit_fixtures.py", "")
    _write(tmp_path, "packages/mugv-dit/benchmarks/b.py", "from mugv_dit_fixtures import f\n")
    _write(tmp_path, "packages/mugv-infer/tests/mugv_infer_fixtures.py", "")
    _write(tmp_path, "packages/mugv-align/tests/test_z.py", "import mugv_infer_fixtures\n")
    # computed or relative names are not resolved
    _write(
        tmp_path,
        "packages/mugv-data/src/mugv_data/ok.py",
        "import importlib\nname = 'mugv_dit'\nimportlib.import_module(name)\n"
        "importlib.import_module('.x', 'mugv_data')\n",
    )
    _write(
        tmp_path,
        "packages/mugv-kernels/benchmarks/c.py",
        "import importlib\nx = 'dit'\nimportlib.import_module(f'mugv_{x}')\n"
        "importlib.import_module('mugv_' + x)\n",
    )
    problems = check_imports.violations(tmp_path)
    computed = "computes the name of a mugv module to import; the import rules cannot check it (import the module by name)"  # fmt: skip
    assert sorted(problems) == sorted(
        [
            f"packages/mugv-kernels/benchmarks/c.py:3: {computed}",
            f"packages/mugv-kernels/benchmarks/c.py:4: {computed}",
            "packages/mugv-data/tests/test_x.py:1: mugv-data may not import mugv_vae "
            "(allowed: ['formats', 'kernels'])",
            "packages/mugv-vae/benchmarks/bench_x.py:4: mugv-vae may not import mugv_dit "
            "(allowed: ['formats', 'kernels'])",
            "packages/mugv-infer/tests/test_y.py:1: mugv-infer may not import mugv_align "
            "(allowed: ['formats', 'kernels', 'vae'])",
            "packages/mugv-align/tests/test_z.py:1: mugv-align may not import mugv_infer "
            "(allowed: ['dit', 'formats', 'kernels'])",
        ]
    )


def test_check_forbids_megatron_in_infer_and_module_level_torch_in_formats(
    repo_root: Path, tmp_path: Path, monkeypatch
) -> None:
    _copy_tree(repo_root, tmp_path)
    _write(
        tmp_path,
        "packages/mugv-infer/src/mugv_infer/m.py",
        "def f():\n    from megatron.core import parallel_state\n",
    )
    _write(tmp_path, "packages/mugv-infer/benchmarks/b.py", "import megatron.core\n")
    _write(tmp_path, "packages/mugv-dit/src/mugv_dit/m.py", "import megatron.core\n")  # allowed
    formats = "packages/mugv-formats/src/mugv_formats"
    _write(tmp_path, f"{formats}/bad.py", "import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n")  # fmt: skip
    _write(tmp_path, f"{formats}/bad2.py", "from torch import nn\n")
    _write(
        tmp_path,
        f"{formats}/ok.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n\n"
        "def f():\n    import torch\n\nclass C:\n    import torch\n",
    )
    _write(tmp_path, "packages/mugv-formats/tests/test_t.py", "import torch\n")  # tests may
    problems = check_imports.violations(tmp_path)
    megatron = "may not import megatron (mugv-infer runs without Megatron-Core (pure PyTorch inference))"  # fmt: skip
    torch_msg = "imports torch at module level (import it inside the function that needs it)"
    infer = "packages/mugv-infer"
    expected = [
        f"{infer}/src/mugv_infer/m.py:2: mugv-infer {megatron}",
        f"{infer}/benchmarks/b.py:1: mugv-infer {megatron}",
        f"{formats}/bad.py:3: mugv-formats {torch_msg}",
        f"{formats}/bad2.py:1: mugv-formats {torch_msg}",
    ]
    assert sorted(problems) == sorted(expected)


def test_allowed_exceptions_name_a_file_and_a_package(
    repo_root: Path, tmp_path: Path, monkeypatch
) -> None:
    _copy_tree(repo_root, tmp_path)
    _write(tmp_path, "packages/mugv-infer/benchmarks/compare.py", "import mugv_dit\n")
    assert len(check_imports.violations(tmp_path)) == 1
    monkeypatch.setattr(
        check_imports,
        "ALLOWED_EXCEPTIONS",
        {("packages/mugv-infer/benchmarks/compare.py", "dit"): "compares with the trainer"},
    )
    assert check_imports.violations(tmp_path) == []


def test_allowed_exceptions_are_live_and_explained(repo_root: Path) -> None:
    """Each listed exception has a reason and its file still imports the package (none stale)."""
    helpers = check_imports.helper_modules(repo_root)
    for (rel, target), reason in check_imports.ALLOWED_EXCEPTIONS.items():
        assert reason.strip(), rel
        imported = check_imports.imported_mugv_packages(repo_root / rel, helpers)
        assert target in {t for _, t in imported}, f"{rel} no longer imports mugv_{target}"

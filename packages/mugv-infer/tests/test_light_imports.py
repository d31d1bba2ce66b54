"""The generation settings are checked without diffusers: a settings error of ``mugv-infer
generate`` answers before the pipelines (diffusers, seconds to import on 2 cores; issue 25)
are imported, and mugv_infer.config needs none of them."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from mugv_infer.cli import main
from mugv_infer.config import GenerateConfig
from mugv_infer.limits import DEFAULT_NEGATIVE_PROMPT, MAX_STEPS

assert GenerateConfig.model_fields["negative_prompt"].default == DEFAULT_NEGATIVE_PROMPT
code = main(["generate", "--prompt", "a cat", "--steps", str(MAX_STEPS + 1)])
print(code, "diffusers" in sys.modules, "mugv_infer.pipeline" in sys.modules)
"""


def test_a_settings_error_imports_no_diffusers():
    res = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["2", "False", "False"], (res.stdout, res.stderr[-2000:])
    assert "steps" in res.stderr  # the one-line error names the setting


def test_the_pipeline_re_exports_the_same_bounds():
    import mugv_infer
    from mugv_infer import limits, pipeline

    assert pipeline.MAX_STEPS == limits.MAX_STEPS and pipeline.MAX_FPS == limits.MAX_FPS
    assert pipeline.MAX_GUIDANCE == limits.MAX_GUIDANCE
    assert pipeline.DEFAULT_NEGATIVE_PROMPT is limits.DEFAULT_NEGATIVE_PROMPT
    assert mugv_infer.DEFAULT_NEGATIVE_PROMPT is limits.DEFAULT_NEGATIVE_PROMPT

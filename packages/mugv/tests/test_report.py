"""The report's inline SVG charts place points where the axes say."""

from __future__ import annotations

import re

from mugv.report import svg_chart


def test_points_map_to_the_plot_corners_and_nan_is_dropped():
    svg = svg_chart(
        {"loss": [(0, 0.0), (5, float("nan")), (10, 5.0)]},
        title="t <b>",
        ylabel="y",
        width=460,
        height=220,
    )
    # plot area: x from 52 to 450 (460 - 10), y from 22 (top) to 190 (220 - 30)
    (points,) = re.findall(r'points="([^"]+)"', svg)
    assert points == "52.0,190.0 450.0,22.0"
    assert "t &lt;b&gt;" in svg and "<b>" not in svg  # titles are escaped


def test_two_series_share_the_axes_and_empty_data_says_so():
    svg = svg_chart({"a": [(0, 1.0), (2, 3.0)], "b": [(1, 2.0)]}, title="t", ylabel="y")
    a, b = re.findall(r'points="([^"]+)"', svg)
    assert a == "52.0,190.0 450.0,22.0" and b == "251.0,106.0"
    assert "no data" in svg_chart({"a": []}, title="t", ylabel="y")


def test_dit_validation_curve_per_curriculum_stage_and_the_vae_eval_table(tmp_path):
    import json

    from mugv.layout import RunLayout
    from mugv.report import _training, _vae_eval, _validation_by_stage

    # a DiT run's metrics.jsonl: training rows carry their stage, a validation row the step
    # after which it ran (mugv-dit's _log_event)
    rows = [{"step": s, "loss": 1.0 - s / 10, "stage": "warmup" if s < 4 else "video"}
            for s in range(8)]  # fmt: skip
    for s, loss in ((1, 0.9), (3, 0.8), (5, 0.7), (7, 0.65)):
        rows.append({"step": s, "validation": {"steps_done": s + 1, "loss": loss, "items": 8}})
    assert _validation_by_stage(rows) == {"warmup": [(2, 0.9), (4, 0.8)],
                                          "video": [(6, 0.7), (8, 0.65)]}  # fmt: skip
    run = RunLayout(tmp_path)
    run.dit.mkdir(parents=True)
    (run.dit / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = _training(run)
    assert "DiT validation loss (per curriculum stage)" in html
    assert "warmup <b>0.8000</b>, video <b>0.6500</b>" in html
    # the `mugv eval vae` table, one row per resolution
    assert "No <code>mugv eval vae</code> table" in _vae_eval(run)
    run.recon_eval.mkdir(parents=True)
    clips = [{"clip": "a", "frames": 17, "psnr": 20.0, "ssim": 0.5}]
    res = {"frames": 17, "device": "cpu", "resolutions": [
        {"resolution": "64x64", "size": [64, 64], "clips": clips,
         "mean": {"psnr": 22.5, "ssim": 0.61}, "clips_per_second": 3.2}]}  # fmt: skip
    (run.recon_eval / "vae.json").write_text(json.dumps(res))
    table = _vae_eval(run)
    assert "<td>64x64 (64x64)</td><td>1</td><td>22.5000</td><td>0.6100</td><td>3.2</td>" in table
    assert "LPIPS" not in table

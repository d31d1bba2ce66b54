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

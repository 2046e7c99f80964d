"""bench/plot_results.py: the documentation's figures are redrawn from docs/plots.json."""

import glob
import json
import os
import re

import PIL.Image
import pytest
from click.testing import CliRunner

from conftest import load_bench

plot_results = load_bench('plot_results')


def run(*args):
    return CliRunner().invoke(plot_results.main, list(args))


def test_docs_figures_json_names_only_drawable_series():
    with open(plot_results.DEFAULT_JSON, encoding='utf-8') as f:
        figures = json.load(f)
    for name, spec in figures.items():
        assert name.endswith('.png') and spec['title'] and spec['panels'], name
        for panel in spec['panels']:
            for series in panel['series']:
                assert series['method'] in plot_results.COLOURS, (name, series['label'])
                assert all(len(point) == 2 for point in series['points']), (name, series['label'])


def test_a_figure_is_drawn_from_the_json_points(tmp_path):
    pytest.importorskip('matplotlib')
    spec = {'one.png': {'title': 't', 'panels': [{'xlabel': 'x', 'ylabel': 'y', 'logx': True, 'series': [
        {'label': 'patch', 'method': 'patch', 'points': [[10, 3.0], [100, 2.0]]},
        {'label': 'full', 'method': 'full', 'points': [[10, 2.5], [100, 1.5]]}]}]}}
    (tmp_path / 'plots.json').write_text(json.dumps(spec))
    result = run(f'--json={tmp_path / "plots.json"}', f'--outdir={tmp_path}', '--only=one.png')
    assert result.exit_code == 0, result.output
    assert PIL.Image.open(tmp_path / 'one.png').size[0] > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ['one.png', 'plots.json']


def test_a_log_y_panel_is_drawn_on_a_log_axis_labelled_at_its_ticks(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    drawn = []
    monkeypatch.setattr(plot_results, 'save', lambda fig, path: drawn.append(fig))
    spec = {'title': 't', 'panels': [{'xlabel': 'x', 'ylabel': 'y', 'logx': True, 'logy': True, 'yticks': [20, 50, 200],
                                      'series': [{'label': 'full', 'method': 'full', 'points': [[10, 200.0], [100, 20.0]]}]}]}
    plot_results.draw_figure(plot_results.pyplot(), spec, str(tmp_path / 'one.png'))
    ax = drawn[0].axes[0]
    assert ax.get_yscale() == 'log' and ax.get_xscale() == 'log'
    assert [t.get_text() for t in ax.get_yticklabels()] == ['20', '50', '200']


def test_unknown_figure_is_a_one_line_error(tmp_path):
    result = run(f'--outdir={tmp_path}', '--only=nope.png')
    assert result.exit_code == 1 and '--only: "nope.png" is none of method.png' in result.output
    assert list(tmp_path.iterdir()) == []


def test_every_figure_the_docs_show_exists_and_every_figure_is_shown():
    root = os.path.dirname(plot_results.DEFAULT_JSON)
    pages = [os.path.join(os.path.dirname(root), 'README.md')] + glob.glob(os.path.join(root, '*.md'))
    named = set()
    for page in pages:
        with open(page, encoding='utf-8') as f:
            for target in re.findall(r'\]\(([^)\s#]+\.png)\)', f.read()):
                named.add(os.path.normpath(os.path.join(os.path.dirname(page), target)))
    on_disk = set(glob.glob(os.path.join(root, '*.png')))
    assert sorted(named - on_disk) == [], 'named by a page but missing'
    assert sorted(on_disk - named) == [], 'in docs/ but shown by no page'

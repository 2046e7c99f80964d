"""Post-hoc EMA (training/phema.py, reconstruct_phema.py): the width ↔ exponent map, the inner product, the per-step update against its exact
discrete profile weights, reconstruction (tracked profile back exactly, a third profile from two
within the fit's bound), exact resume, `--ema-std` absent = training unchanged, and user errors."""

import os
import shutil

import numpy as np
import pytest
import scipy.integrate
import torch
from click.testing import CliRunner

import dnnlib
import reconstruct_phema
from conftest import assert_cleaned, plant_temps
from test_training_loop import loop_config
from test_training import TINY, make_zip
from training import checkpoints, phema, training_loop, training_state


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp('data') / 'digits.zip', count=32, size=8)


def test_width_and_exponent_check_values_and_profile_std():
    """σ_rel 0.050 ↔ γ 16.97 and 0.100 ↔ 6.94 (the paper's pair); σ_rel is the profile's std relative to its end time."""
    assert phema.std_to_exp(0.05) == pytest.approx(16.97, abs=0.01)
    assert phema.std_to_exp(0.10) == pytest.approx(6.94, abs=0.01)
    for std in (0.01, 0.05, 0.2, 0.29):
        gamma = phema.std_to_exp(std)
        assert gamma > -1 and phema.exp_to_std(gamma) == pytest.approx(std, rel=1e-9)
        moments = [scipy.integrate.quad(lambda x, k=k: x ** k * (gamma + 1) * x ** gamma, 0, 1)[0] for k in (1, 2)]
        assert np.sqrt(moments[1] - moments[0] ** 2) == pytest.approx(std, rel=1e-6)  # the profile ends at t = 1


def test_inner_product_matches_numerical_integration():
    for t_a, g_a, t_b, g_b in [(100, 6.94, 60, 16.97), (50, 3.0, 50, 3.0), (7, 0.5, 300, 20.0)]:
        def profile(tau, t, g):
            return (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.0
        numeric = scipy.integrate.quad(lambda tau: profile(tau, t_a, g_a) * profile(tau, t_b, g_b), 0, min(t_a, t_b), limit=200)[0]
        assert phema.profile_inner(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-7)


def test_update_equals_the_exact_discrete_profile_average():
    """θ̂_T = Σ_t w_t θ_t with w_t = (t^(γ+1) − (t−1)^(γ+1)) / T^(γ+1) = ∫_{t−1}^{t} p_T(τ) dτ, the
    weights that β_t = (1 − 1/t)^(γ+1) implies, for a scalar parameter following a known sequence."""
    net = torch.nn.Module()
    net.theta = torch.nn.Parameter(torch.zeros([], dtype=torch.float64))
    ema = phema.PowerEMA(net, [0.05, 0.10, 0.2])
    steps = 400
    thetas = np.sin(np.arange(1, steps + 1) / 17) + np.arange(1, steps + 1) / 100
    for t, value in enumerate(thetas, start=1):
        net.theta.data.fill_(value)
        ema.update(net, t)
        if t in (1, 37, steps):
            for gamma, average in zip(ema.gammas, ema.averages):
                k = np.arange(1, t + 1, dtype=np.float64)
                weights = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / float(t) ** (gamma + 1)
                assert weights.sum() == pytest.approx(1)
                assert float(average['theta']) == pytest.approx(float(weights @ thetas[:t]), rel=1e-12, abs=1e-12)


def test_solve_weights_returns_a_tracked_profile_and_fits_others():
    t = np.array([10, 20, 30, 40, 10, 20, 30, 40], np.float64)
    gammas = np.array([phema.std_to_exp(0.05)] * 4 + [phema.std_to_exp(0.10)] * 4)
    weights, residual = phema.solve_weights(t, gammas, 30, phema.std_to_exp(0.10))
    assert residual == 0 and list(weights) == [0, 0, 0, 0, 0, 0, 1, 0]
    weights, residual = phema.solve_weights(t, gammas, 40, phema.std_to_exp(0.075))
    assert 0 < residual < 0.05 and weights.sum() == pytest.approx(1, abs=0.02)


def test_reconstruction_from_two_widths_matches_a_third_within_the_fit_bound(tmp_path):
    """Weights on a random walk with drift, profiles σ_rel 0.05 and 0.10 saved every 10 steps, 0.075
    tracked beside them: 0.075 rebuilt from the saved two at step 200 differs from the tracked one by
    at most ‖Σ wᵢ pᵢ − p*‖ ‖θ̄‖ (Cauchy–Schwarz; θ̄ the piecewise-constant trajectory, whose profile
    averages the update computes exactly), a bound well below the gap between the widths."""
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 8)
    saved, third = phema.PowerEMA(net, [0.05, 0.10]), phema.PowerEMA(net, [0.075])
    squares = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in net.named_parameters()}
    drift = {name: torch.randn_like(p) * 0.05 for name, p in net.named_parameters()}
    for step in range(1, 201):
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.add_(drift[name] + torch.randn_like(p) * 0.1)
                squares[name] += p.double() ** 2
        saved.update(net, step)
        third.update(net, step)
        if step % 10 == 0:
            saved.save(str(tmp_path), step // 10, step, step)
    end_kimg, [(std, params, residual)] = reconstruct_phema.reconstruct(str(tmp_path), [0.075])
    assert end_kimg == 20 and std == 0.075 and 0 < residual < 0.05
    norm = residual * np.sqrt(phema.profile_inner(200, third.gammas[0], 200, third.gammas[0]))
    for name, tracked in third.averages[0].items():
        bound = norm * squares[name].sqrt() + 1e-5 * tracked.abs().max()
        gap = (params[name] - tracked.double()).abs()
        assert (gap <= bound).all(), name
        width_gap = (saved.averages[0][name] - tracked).abs().double()
        assert bound.mean() < 0.2 * width_gap.mean(), name


def test_outkimg_ends_the_profiles_earlier_and_tracked_ones_come_back(tmp_path):
    """Ending at an earlier save uses only the profiles saved up to then; a tracked width at that
    end is its saved average."""
    net = torch.nn.Linear(4, 2)
    ema = phema.PowerEMA(net, [0.05, 0.10])
    for step in range(1, 31):
        with torch.no_grad():
            net.weight.add_(0.1)
        ema.update(net, step)
        if step % 10 == 0:
            ema.save(str(tmp_path), step // 10, step, step)
            if step == 20:
                at_20 = {name: t.clone() for name, t in ema.averages[1].items()}
    end_kimg, [(_std, params, residual)] = reconstruct_phema.reconstruct(str(tmp_path), [0.10], outkimg=2)
    assert end_kimg == 2 and residual == 0
    for name, tensor in at_20.items():
        assert torch.equal(params[name].float(), tensor)


def run_loop(digits, run_dir, *options, stop_at=None, resume_state=None):
    """Trains 8 steps of batch 2 (one per tick, snapshot every 4 ticks, state at the end or at step
    `stop_at`); returns the parameters after the last step."""
    os.makedirs(run_dir, exist_ok=True)
    c = loop_config(digits, '--duration=0.000016', '--patch=0', *options)
    c.update(snapshot_ticks=4, state_dump_ticks=1000)
    seen = {}

    def at_step(info):
        seen['net'] = [p.detach().clone() for p in info.net.parameters()]
        return info.step == stop_at

    training_loop.training_loop(**c, run_dir=str(run_dir), step_callback=at_step, resume_state=resume_state)
    return seen['net']


def final_state(run_dir):
    return training_state.load_state(os.path.join(run_dir, training_state.state_name(0)))


def test_profiles_leave_training_unchanged_and_resume_exactly(digits, tmp_path):
    """A run with --ema-std trains the same weights and EMA as one without (which saves no profiles
    and no 'phema' in its state); stopped after step 3 and resumed, it ends with the same profiles."""
    plain = run_loop(digits, tmp_path / 'plain')
    tracked = run_loop(digits, tmp_path / 'full', '--ema-std=0.05,0.1')
    assert all(torch.equal(a, b) for a, b in zip(plain, tracked))
    assert 'phema' not in final_state(tmp_path / 'plain') and not phema.list_saved(str(tmp_path / 'plain'))
    full = final_state(tmp_path / 'full')
    for name, tensor in final_state(tmp_path / 'plain')['ema'].items():
        assert torch.equal(tensor, full['ema'][name]), name
    assert full['phema']['step'] == 8 and list(phema.list_saved(str(tmp_path / 'full'))) == [0]

    out = tmp_path / 'out'  # a tracked width comes back exactly, as a snapshot that generate.py loads
    gone, kept = plant_temps(out, reconstruct_phema.output_name(0, 0.1))  # left by killed runs, or not ours
    result = CliRunner().invoke(reconstruct_phema.main, ['--indir', str(tmp_path / 'full'), '--outdir', str(out), '--outstd=0.1'])
    assert result.exit_code == 0, result.output
    assert_cleaned(out, gone, kept)
    net, _decoder = checkpoints.load_network(str(out / reconstruct_phema.output_name(0, 0.1)))
    for name, param in net.named_parameters():
        assert torch.equal(param, full['phema']['averages'][1][name]), name

    run_loop(digits, tmp_path / 'split', '--ema-std=0.05,0.1', stop_at=3)
    shutil.copy(tmp_path / 'split' / training_state.state_name(0), tmp_path / 'state.pt')
    run_loop(digits, tmp_path / 'split', '--ema-std=0.05,0.1', resume_state=str(tmp_path / 'state.pt'))
    split = final_state(tmp_path / 'split')
    assert split['phema']['step'] == 8
    for a, b in zip(full['phema']['averages'], split['phema']['averages']):
        for name in a:
            assert torch.equal(a[name], b[name]), name

    with pytest.raises(dnnlib.util.UserError, match='stds: .*widths'):
        run_loop(digits, tmp_path / 'other', '--ema-std=0.05', resume_state=str(tmp_path / 'state.pt'))


def test_ema_std_errors_name_the_option(digits, tmp_path):
    import train
    for value, needle in (('abc', 'not a comma-separated list'), ('0.5', 'not a relative EMA width')):
        result = CliRunner().invoke(train.main, ['--outdir', str(tmp_path), '--data', digits, '--patch=0', f'--ema-std={value}', '-n', *TINY])
        assert result.exit_code == 1 and 'Error: --ema-std: ' in result.output and needle in result.output, result.output
    result = CliRunner().invoke(reconstruct_phema.main, ['--indir', str(tmp_path), '--outdir', str(tmp_path / 'o'), '--outstd=0.1'])
    assert result.exit_code == 1 and 'holds no phema-*.pt files' in result.output
    result = CliRunner().invoke(reconstruct_phema.main, ['--indir', str(tmp_path), '--outdir', str(tmp_path / 'o'), '--outstd=0.4'])
    assert result.exit_code == 1 and 'Error: --outstd: ' in result.output


def test_phema_demo_scores_every_width_at_every_snapshot_after_kimg_0(tmp_path, monkeypatch):
    """bench/phema_demo.py reconstructs each width at each saved kimg after 0 from the run's own
    profiles (a tracked width exactly) and writes the curves and the plot."""
    import json
    from click.testing import CliRunner
    from conftest import load_bench, make_tiny_net
    from training import run_files
    bench = load_bench('phema_demo')
    net = make_tiny_net(resolution=8, channels=1)
    profiles = phema.PowerEMA(net, [0.05, 0.10])
    tracked = {}
    for step in range(1, 31):
        with torch.no_grad():
            for param in net.parameters():
                param.add_(0.01)
        profiles.update(net, step)
        if step % 10 == 0:
            kimg = step // 10 - 1
            run_files.save_snapshot(str(tmp_path), kimg, net, None, None, {})
            profiles.save(str(tmp_path), kimg, step, step)
            tracked[kimg] = sum(float(t.double().sum()) for t in profiles.averages[1].values())
    (tmp_path / 'training_options.json').write_text(json.dumps(dict(dataset_kwargs={})))

    calls = []

    def parameter_sum(network, ref, num, **kwargs):
        """Stands in for the FID of `network`: the sum of its parameters."""
        calls.append((ref, num, kwargs.get('solver'), kwargs.get('num_steps')))
        return dict(fid=sum(float(p.double().sum()) for p in network.parameters()))

    monkeypatch.setattr(bench.metrics, 'score_network', parameter_sum)
    monkeypatch.setattr(bench.metrics, 'load_reference', lambda path: dict(path=path))
    monkeypatch.setattr(bench.metrics, 'load_detector', lambda device=None, bf16=False: None)
    ref = tmp_path / 'ref.npz'
    ref.write_bytes(b'')
    result = CliRunner().invoke(bench.main, ['--run', str(tmp_path), '--ref', str(ref), '--widths=0.03,0.1', '--num=4',
                                             '--solver=dpmpp-2m', '--steps=7'])
    assert result.exit_code == 0, result.output
    curves = json.loads((tmp_path / 'phema-demo.json').read_text())['fid']
    assert list(curves) == ['0.030', '0.100'] and [k for k, _ in curves['0.100']] == [1, 2]
    assert [score for _, score in curves['0.100']] == pytest.approx([tracked[1], tracked[2]], rel=1e-5)
    assert [score for _, score in curves['0.030']] != [score for _, score in curves['0.100']]
    assert (tmp_path / 'phema-demo.png').is_file()
    assert calls[0] == (dict(path=str(ref)), 4, 'dpmpp-2m', 7) and len(calls) == 4
    result = CliRunner().invoke(bench.main, ['--run', str(tmp_path), '--ref', str(ref), '--widths=0.1', '--every=2'])
    assert result.exit_code == 0, result.output
    assert [k for k, _ in json.loads((tmp_path / 'phema-demo.json').read_text())['fid']['0.100']] == [2]

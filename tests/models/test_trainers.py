"""The three trainers against each other, against numpy's lstsq, the seed notebook's loop, and ground truth."""

import numpy as np
import pytest
import torch

from linreg.models.fit import TrainOptions, fit
from tests.helpers import SEED_X, SEED_Y

FEATURES, TARGETS = ["temp", "rainfall", "humidity"], ["apples", "oranges"]


def lstsq(X, Y, fit_intercept=True):
    A = np.hstack([X, np.ones((len(X), 1))]) if fit_intercept else X
    sol = np.linalg.lstsq(A, Y, rcond=None)[0]
    return (sol[:-1].T, sol[-1]) if fit_intercept else (sol.T, np.zeros(Y.shape[1]))


def train_mse(model, X, Y):
    return ((Y - model.predict(X)) ** 2).mean(axis=0)


def test_exact_matches_lstsq_on_seed_sample():
    result = fit([(SEED_X, SEED_Y)], trainer="exact", features=FEATURES, targets=TARGETS)
    coef, intercept = lstsq(SEED_X, SEED_Y)
    np.testing.assert_allclose(result.model.coef_, coef, rtol=1e-6)
    np.testing.assert_allclose(result.model.intercept_, intercept, rtol=1e-6)


@pytest.mark.parametrize("trainer", ["manual", "nn"])
def test_gradient_trainer_defaults_reach_one_percent_of_optimum_on_seed_sample(trainer):
    result = fit([(SEED_X, SEED_Y)], trainer=trainer, features=FEATURES, targets=TARGETS)
    optimum = result.exact.rss / len(SEED_X)
    gap = train_mse(result.model, SEED_X, SEED_Y) / optimum
    assert np.all(gap <= 1.01), gap
    assert result.epochs < 1000  # stopped by the convergence rule, not the epoch cap


def _shape(n, p, seed, correlated):
    """Columns of very different scales and offsets, optionally correlated, with noise."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-3, 4, p)
    Z = rng.normal(size=(n, p)) + (rng.normal(size=(n, 1)) if correlated else 0)
    X = Z * scales + rng.normal(size=p) * scales * 5
    W = rng.normal(size=(2, p)) / scales
    Y = X @ W.T + rng.normal(size=2) * 10 + rng.normal(size=(n, 2))
    return X.astype(np.float32) if seed % 2 else X, Y


SHAPES = [(5, 1, False), (8, 3, True), (50, 12, True), (1000, 12, False), (1000, 1, True),
          (100_000, 12, True), pytest.param(1_000_000, 3, False, marks=pytest.mark.slow)]  # slow: python -m pytest -m slow


@pytest.mark.parametrize("trainer", ["manual", "nn"])
@pytest.mark.parametrize("n,p,correlated", SHAPES)
def test_gradient_trainer_defaults_converge_on_any_well_conditioned_shape(trainer, n, p, correlated):
    X, Y = _shape(n, p, seed=n + p, correlated=correlated)
    result = fit([(X, Y)], trainer=trainer, features=[f"x{i}" for i in range(p)], targets=["a", "b"])
    gap = train_mse(result.model, X.astype(np.float64), Y) / (result.exact.rss / n)
    assert np.all(gap <= 1.01), (gap, result.epochs, result.lr)


def test_batches_of_any_size_give_the_same_exact_fit():
    X, Y = _shape(1000, 4, seed=3, correlated=True)
    whole = fit([(X, Y)], trainer="exact", features=list("abcd"), targets=["y1", "y2"])
    pieces = fit([(X[i:i + 37], Y[i:i + 37]) for i in range(0, 1000, 37)], trainer="exact",
                 features=list("abcd"), targets=["y1", "y2"])
    np.testing.assert_allclose(pieces.model.coef_, whole.model.coef_, rtol=1e-10)


@pytest.mark.parametrize("trainer", ["exact", "manual", "nn"])
def test_every_trainer_recovers_ground_truth_weights(trainer):
    rng = np.random.default_rng(7)
    n, noise = 20_000, 2.0
    X = np.column_stack([rng.normal(75, 12, n), rng.normal(90, 30, n), rng.normal(55, 15, n)])
    W = np.array([[-0.4, 0.85, 0.7], [-0.25, 0.8, 0.9]])
    b = np.array([5.0, -5.0])
    Y = X @ W.T + b + rng.normal(0, noise, size=(n, 2))
    result = fit([(X, Y)], trainer=trainer, features=FEATURES, targets=TARGETS)
    # Standard error of each coefficient is noise / (sqrt(n) * std(x_j)); allow 6 of them.
    tolerance = 6 * noise / (np.sqrt(n) * X.std(axis=0))
    assert np.all(np.abs(result.model.coef_ - W) <= tolerance), (result.model.coef_ - W, tolerance)
    intercept_tolerance = 6 * noise * np.sqrt((1 + (X.mean(0) / X.std(0)) @ (X.mean(0) / X.std(0))) / n)
    assert np.all(np.abs(result.model.intercept_ - b) <= intercept_tolerance)


@pytest.mark.parametrize("trainer", ["exact", "manual", "nn"])
def test_no_intercept_fits_through_the_origin(trainer):
    X, Y = _shape(2000, 3, seed=4, correlated=False)
    result = fit([(X, Y)], trainer=trainer, features=list("abc"), targets=["y1", "y2"],
                 options=TrainOptions(fit_intercept=False))
    coef, _ = lstsq(X, Y, fit_intercept=False)
    assert np.all(result.model.intercept_ == 0)
    if trainer == "exact":
        np.testing.assert_allclose(result.model.coef_, coef, rtol=1e-8)
    else:
        optimum = ((Y - X @ coef.T) ** 2).mean(axis=0)
        assert np.all(train_mse(result.model, X, Y) / optimum <= 1.01)


def test_manual_without_standardization_reproduces_the_seed_notebook():
    """--no-standardize --lr 1e-5 --tol 0 --epochs 500 is the notebook's loop, step for step."""
    result = fit([(SEED_X, SEED_Y)], trainer="manual", features=FEATURES, targets=TARGETS,
                 options=TrainOptions(standardize=False, lr=1e-5, tol=0, epochs=500, seed=42))
    inputs, targets = torch.from_numpy(SEED_X.astype(np.float32)), torch.from_numpy(SEED_Y.astype(np.float32))
    gen = torch.Generator().manual_seed(42)
    w = torch.randn(2, 3, generator=gen).requires_grad_(True)
    b = torch.randn(2, generator=gen).requires_grad_(True)

    def mse(t1, t2):
        diff = t1 - t2
        return torch.sum(diff * diff) / diff.numel()

    for _ in range(500):
        preds = inputs @ w.t() + b
        loss = mse(preds, targets)
        loss.backward()
        with torch.no_grad():
            w -= w.grad * 1e-5
            b -= b.grad * 1e-5
            w.grad.zero_()
            b.grad.zero_()
    np.testing.assert_allclose(result.model.coef_, w.detach().double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.model.intercept_, b.detach().double().numpy(), rtol=1e-5)
    assert result.epochs == 500
    with torch.no_grad():
        final = float(mse(inputs @ w.t() + b, targets))
    assert result.losses[-1] == pytest.approx(final, rel=1e-5)


@pytest.mark.parametrize("trainer", ["manual", "nn"])
def test_gradient_trainers_are_deterministic_for_a_seed(trainer):
    X, Y = _shape(3000, 3, seed=5, correlated=True)
    runs = [fit([(X, Y)], trainer=trainer, features=list("abc"), targets=["y1", "y2"],
                options=TrainOptions(seed=3, batch_size=64)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].model.coef_, runs[1].model.coef_)
    assert runs[0].losses == runs[1].losses


def test_divergence_is_a_clear_error():
    from linreg.errors import InputError

    with pytest.raises(InputError, match="diverged"):
        fit([(SEED_X, SEED_Y)], trainer="manual", features=FEATURES, targets=TARGETS,
            options=TrainOptions(standardize=False, lr=1.0, epochs=50))


@pytest.mark.parametrize("trainer", ["manual", "nn"])
def test_weighted_mini_batches_reach_the_weighted_optimum(trainer):
    X, Y = _shape(1000, 4, seed=6, correlated=True)
    w = np.random.default_rng(6).exponential(size=1000)
    w[::7] = 0.0
    result = fit([(X, Y, w)], trainer=trainer, features=list("abcd"), targets=["y1", "y2"],
                 options=TrainOptions(batch_size=100))
    optimum = result.exact.rss / w.sum()
    gap = w @ (Y - result.model.predict(X.astype(np.float64))) ** 2 / w.sum() / optimum
    assert np.all(gap <= 1.01), gap
    # The unweighted optimum is a different point, so the weights did matter.
    unweighted = fit([(X, Y)], trainer="exact", features=list("abcd"), targets=["y1", "y2"])
    assert np.linalg.norm(unweighted.model.coef_ - result.exact.coef) > 1e-3 * np.linalg.norm(result.exact.coef)


@pytest.mark.parametrize("trainer", ["nn", "manual"])
def test_the_trainers_rows_are_row_major_whatever_the_batches_layout(trainer, monkeypatch):
    """Batches arrive column-major (a column per feature); the rows the trainers shuffle and gather are
    row-major (a gather of column-major rows was ten times slower), and the fit is the same either way."""
    from linreg.models import sources

    seen = []
    for name in ("ShuffledOnceRows", "ReshuffledRows"):
        cls = getattr(sources, name)
        original = cls.__init__

        def spy(self, X, Y, *args, __original=original, **kwargs):
            seen.append((X.stride(), Y.stride(), X.shape[1], Y.shape[1]))
            __original(self, X, Y, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    rng = np.random.default_rng(0)
    X = np.asfortranarray(rng.normal(size=(500, 3)))
    Y = np.asfortranarray(X @ [[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]] + 1.0)
    model = fit([(X[i:i + 100], Y[i:i + 100]) for i in range(0, 500, 100)], trainer=trainer,
                features=["a", "b", "c"], targets=["y", "z"], options=TrainOptions(epochs=3, seed=1))
    assert seen and all(x_stride[1] == 1 and y_stride[1] == 1 and x_stride[0] >= p and y_stride[0] >= k
                        for x_stride, y_stride, p, k in seen)
    assert np.isfinite(model.model.coef_).all()


def _batches(steps=40, n=257, p=3, k=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, p, generator=g) * 3 + 1, torch.randn(n, k, generator=g)) for _ in range(steps)]


def test_the_nn_update_is_torch_optim_sgds_float_for_float():
    from linreg.models.trainers import SGD, Linear

    torch.manual_seed(0)
    ours, theirs = Linear(3, 2), torch.nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    mine, reference = SGD(ours.parameters(), lr=0.03), torch.optim.SGD(theirs.parameters(), lr=0.03)
    for i, (x, y) in enumerate(_batches()):
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias), i
        if i == 20:  # the schedule's cut, as the trainer sets it
            for group in mine.param_groups + reference.param_groups:
                group["lr"] /= 5
    assert not torch.equal(ours.weight, Linear(3, 2).weight)  # it moved


def test_the_separate_update_is_the_seeds_two_roundings():
    from linreg.models.trainers import SGD

    w = torch.randn(2, 3, requires_grad=True)
    w.grad = torch.randn(2, 3) * 1e-3
    expected = w.detach() - w.grad * 0.7
    SGD([w], lr=0.7, separate=True).step()
    assert torch.equal(w.detach(), expected)


def test_the_nn_models_forward_and_gradients_are_nn_linears():
    from linreg.models.trainers import Linear

    x, y = _batches(steps=1, n=8192)[0]
    for bias in (True, False):
        torch.manual_seed(1)
        ours = Linear(3, 2, bias=bias)
        theirs = torch.nn.Linear(3, 2, bias=bias)
        theirs.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), theirs(x))
        for model in (ours, theirs):
            torch.nn.functional.mse_loss(model(x), y).backward()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a.grad, b.grad)
        assert isinstance(ours, torch.nn.Linear)  # DDP, state_dict and snapshots see an nn.Linear


def test_the_optimizer_state_round_trips_and_reads_torch_optim_sgds():
    from linreg.models.trainers import SGD

    params = [torch.zeros(2, 3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    saved = SGD(params, lr=0.25).state_dict()
    assert saved == {"state": {}, "param_groups": [{"lr": 0.25, "params": [0, 1]}]}
    restored = SGD(params, lr=1.0)
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["lr"] == 0.25
    restored.load_state_dict(torch.optim.SGD(params, lr=0.125).state_dict())
    assert restored.param_groups[0]["lr"] == 0.125


def test_an_nn_fit_never_imports_torch_dynamo():
    """torch.optim's first call imports torch._dynamo (about 1 s a process); the nn trainer's SGD does not."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from linreg.models.fit import TrainOptions, fit\n"
            "X = np.random.default_rng(0).normal(size=(500, 3)); Y = X @ np.ones((3, 2)) + 1\n"
            "r = fit([(X, Y)], trainer='nn', features=['a', 'b', 'c'], targets=['y', 'z'], options=TrainOptions(epochs=3, tol=0))\n"
            "assert r.epochs == 3, r.epochs\n"
            "print('torch._dynamo' in sys.modules, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]

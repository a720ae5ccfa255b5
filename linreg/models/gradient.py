"""The gradient trainers' half of a fit (`linreg.models.fit`): standardize the rows one pass gathered, build
the batch source, model, optimizer and schedule, and train. The only part of a fit that imports torch: an
exact fit never loads it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from linreg.inputs.batches import stack_float32
from linreg.models.fit import uses_ddp
from linreg.models.sources import ReshuffledRows, ShuffledOnceRows, StreamedSteps
from linreg.models.standardize import Standardizer
from linreg.models.trainers import SGD, Linear, ManualModel, Schedule, TRAINERS, TrainResult, auto_lr, step_rows
from linreg.parallel import dist, merge

if TYPE_CHECKING:
    from linreg.models.fit import Seen, TrainOptions


def train(seen: Seen, trainer: str, options: TrainOptions, cluster: dist.Cluster, checkpoint, stream
           ) -> tuple[TrainResult, Standardizer, float, bool]:
    """Standardize, build the batch source, model, optimizer and schedule, and run the gradient trainer:
    (its result in the standardized space, the standardizer, the starting learning rate, whether the rows
    were streamed)."""
    p, k = len(seen.x.mean), len(seen.y.mean)
    scaler = Standardizer.fit(seen.x, seen.y, fit_intercept=options.fit_intercept, enabled=options.standardize)
    shift = np.concatenate([scaler.x_mean, scaler.y_mean])
    scale = np.concatenate([scaler.x_scale, scaler.y_scale])
    batch = step_rows(trainer, options.batch_size)
    generator = torch.Generator().manual_seed(options.seed)  # manual's weights and one-process shuffles
    model = ManualModel.draw(k, p, options.fit_intercept, generator, cluster.device) if trainer == "manual" else None
    n_local = seen.n_local
    if seen.parts is None:
        mean_weight = seen.x.weight / max(seen.x.n, 1) if seen.weighted else 1.0  # over all ranks' rows
        rows = stream(shift, scale, n_local, mean_weight)
        source = StreamedSteps(rows, batch=batch, seed=options.seed, device=cluster.device, cluster=cluster,
                               averaged=trainer == "nn")
        checkpoint = None  # streamed epochs are not snapshotted
        # a bound from each column's range: never larger than the true maximum
        far = np.maximum((seen.low - scaler.x_mean) ** 2, (seen.high - scaler.x_mean) ** 2) / scaler.x_scale ** 2
        local_max = float(far.sum()) if n_local else -np.inf
    else:
        X, Y, w = _standardized_rows(seen, p, k, shift, scale, cluster.device)
        if options.lr is None:
            local_max = float((X * X).sum(dim=1).max()) if len(X) else -np.inf
        if trainer == "manual":
            source = ReshuffledRows(X, Y, w, batch=batch, cluster=cluster, seed=options.seed, generator=generator)
        else:
            source = ShuffledOnceRows(X, Y, w, batch=batch, cluster=cluster, seed=options.seed)
    penalty = _penalty(seen, scaler, options, cluster.device)
    lr = options.lr
    if lr is None:
        max_row_sq = cluster.all_reduce_max(local_max) + (1.0 if options.fit_intercept else 0.0)
        n_rows = merge.total(cluster, n_local)  # all ranks' rows: the same lr as one process
        lr = auto_lr(scaler.second_moment(seen.x, options.fit_intercept), max_row_sq, n_rows=n_rows,
                     batch=batch or n_rows, n_targets=k, max_penalty=0.0 if penalty is None else float(penalty.max()))
    schedule = Schedule(lr, tol=options.tol, patience=options.patience)
    if trainer == "manual":
        trained = TRAINERS[trainer](source, model, schedule, epochs=options.epochs, cluster=cluster, penalty=penalty,
                                    checkpoint=checkpoint, generator=generator)
    else:
        torch.manual_seed(options.seed)  # nn.Linear's initialization
        model = Linear(p, k, bias=options.fit_intercept).to(cluster.device)
        # local SGD (--average-every > 1, several ranks): no collective per step, the models averaged instead
        local = cluster.distributed and not uses_ddp(trainer, options.average_every)
        # streamed epochs: the update they have always made
        optimizer = SGD(model.parameters(), lr=lr, separate=isinstance(source, StreamedSteps))
        forward = model if local else merge.data_parallel(model, cluster, cluster.device)
        trained = TRAINERS[trainer](source, model, optimizer, schedule, epochs=options.epochs, forward=forward,
                                    penalty=penalty, checkpoint=checkpoint, generator=generator,
                                    **({"average": merge.model_averager(model, cluster, n_local / source.n_rows),
                                        "average_every": options.average_every} if trainer == "nn" and local else {}))
    return trained, scaler, lr, seen.parts is None


def _standardized_rows(seen: Seen, p: int, k: int, shift: np.ndarray, scale: np.ndarray, device):
    """The kept float32 rows, standardized on the CPU and moved to `device`: X (n, p), Y (n, k), w (n,) or None."""
    data = stack_float32(seen.parts, p + k + seen.weighted, torch.device("cpu"))
    seen.parts = []
    data[:, :p + k].sub_(torch.from_numpy(shift.astype(np.float32))).div_(torch.from_numpy(scale.astype(np.float32)))
    data = data.to(device)
    return data[:, :p], data[:, p:p + k], (data[:, p + k] if seen.weighted else None)


def _penalty(seen: Seen, scaler: Standardizer, options: TrainOptions, device) -> torch.Tensor | None:
    """The ridge factors (p,) float32 in the trainer's space, or None without --l2.

    Ridge on the standardized features (sd, or root mean square through the origin), whatever the trainer's
    own scaling: in its space the coefficient c maps to beta * sd / x_scale."""
    if options.l2 <= 0:
        return None
    sd = Standardizer.fit(seen.x, seen.y, fit_intercept=options.fit_intercept, enabled=True).x_scale
    return torch.from_numpy((options.l2 * (sd / scaler.x_scale) ** 2).astype(np.float32)).to(device)

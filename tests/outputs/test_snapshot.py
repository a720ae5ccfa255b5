"""Which snapshots a run resumes from: one list of the fields that cannot change a result
(`linreg.config.NON_RESULT_FIELDS`), shared with --skip-if-unchanged."""

import torch

from linreg.config import NON_RESULT_FIELDS, TrainConfig, result_fields
from linreg.models.trainers import Schedule
from linreg.outputs import snapshot


def _saved(tmp_path, config: TrainConfig) -> snapshot.Snapshots:
    snaps = snapshot.Snapshots(str(tmp_path / "out"), "r", every=1, rank=0,
                               identity=snapshot.identity(config, "inputs"))
    schedule = Schedule(0.1, tol=1e-5, patience=5)
    schedule.step(2.0)
    assert snaps.maybe_save(3, tensors={"w": torch.ones(2)}, schedule=schedule, losses=[3.0, 2.5, 2.0],
                            generator=torch.Generator().manual_seed(0))
    return snaps


def _resumes(tmp_path, config: TrainConfig) -> bool:
    snaps = snapshot.Snapshots(str(tmp_path / "out"), "r", every=1, rank=0,
                               identity=snapshot.identity(config, "inputs"))
    schedule, w = Schedule(0.5, tol=0.0, patience=1), {"w": torch.zeros(2)}
    epochs = snaps.restore(tensors=w, schedule=schedule, losses=[], generator=torch.Generator())
    if epochs:
        assert epochs == 3 and torch.equal(w["w"], torch.ones(2))
        assert schedule.state_dict() == {"lr": 0.1, "tol": 1e-5, "patience": 5, "max_cuts": 4, "best": 2.0,
                                         "stalled": 1, "cuts": 0}
    return epochs > 0


def test_a_gradient_run_with_another_memory_budget_starts_over(tmp_path):
    """--memory-budget decides between in-memory and streamed epochs and sizes the shuffle buffer: it
    changes a gradient trainer's result, so a snapshot made with another budget is not resumed."""
    config = TrainConfig(trainer="nn", memory_budget="256MB", run_id="r", output=str(tmp_path / "out"))
    _saved(tmp_path, config)
    assert not _resumes(tmp_path, config.model_copy(update={"memory_budget": "1GB"}))
    assert not _resumes(tmp_path, config.model_copy(update={"nproc_per_node": 2}))  # other shards, other shuffles
    assert _resumes(tmp_path, config)


def test_launch_options_do_not_stop_a_resume(tmp_path):
    config = TrainConfig(trainer="manual", memory_budget="256MB", run_id="r", output=str(tmp_path / "out"))
    _saved(tmp_path, config)
    relaunched = config.model_copy(update={"snapshot_every": 3, "max_restarts": 2, "dist_timeout_seconds": 30.0,
                                           "rdzv_id": "job", "rdzv_endpoint": "host:29400", "node_rank": 0,
                                           "skip_if_unchanged": True})
    assert _resumes(tmp_path, relaunched)


def test_the_one_list_names_only_fields_that_exist_and_never_a_result_field():
    assert NON_RESULT_FIELDS <= set(TrainConfig.model_fields)
    assert not NON_RESULT_FIELDS & {"memory_budget", "nproc_per_node", "nnodes", "trainer", "seed", "batch_size"}
    dumped = TrainConfig().model_dump(mode="json")
    assert set(result_fields(dumped)) == set(dumped) - NON_RESULT_FIELDS


def test_schedule_state_round_trips():
    schedule = Schedule(1.0, tol=0.1, patience=1)
    for loss in (5.0, 5.0, 5.0):
        schedule.step(loss)
    other = Schedule(9.0, tol=0.0, patience=7)
    other.load_state_dict(schedule.state_dict())
    assert other.state_dict() == schedule.state_dict() and other.lr == 1.0 / 5 / 5 / 5 and other.cuts == 3  # the first epoch counts as no progress (inf - tol * inf is nan)

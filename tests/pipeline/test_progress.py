import logging

from linreg.pipeline.progress import Progress


def test_progress_line_reports_rate_and_eta(caplog):
    progress = Progress("fit pass", 4_000_000, logging.getLogger("linreg.test"), every=0.0)
    with caplog.at_level(logging.INFO, logger="linreg.test"):
        progress.advance(1_000_000)
    line = caplog.records[-1].getMessage()
    assert line.startswith("fit pass: 1.0M/4.0M rows (25%), ")
    assert "rows/s, ETA" in line


def test_progress_is_quiet_between_ticks(caplog):
    progress = Progress("scan", None, logging.getLogger("linreg.test"), every=3600)
    with caplog.at_level(logging.INFO, logger="linreg.test"):
        for _ in range(100):
            progress.advance(10)
    assert not caplog.records and progress.done == 1000

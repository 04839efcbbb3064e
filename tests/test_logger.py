"""metrics.jsonl and TensorBoard mirroring."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from multiscene.logger import MetricsLogger, read_metrics


def test_confusion_histogram_lands_in_its_own_range(tmp_path):
    logger = MetricsLogger(tmp_path)
    # Three bins over [1/3, 1]: 4 steps in the lowest bin, 1 in the highest.
    logger.log({"update": 1, "global_step": 10, "dve/confusion_hist": [4, 0, 1], "dve/confusion_hist_low": 1 / 3,
                "charts/SPS": 5.0})
    logger.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["dve/confusion_hist"] == [4, 0, 1]
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    events.Reload()
    hist = events.Histograms("dve/confusion_hist")[0].histogram_value
    assert hist.num == 5
    assert 1 / 3 <= hist.min <= 1 / 3 + 2 / 9 and 1 - 2 / 9 <= hist.max <= 1.0

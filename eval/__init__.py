"""Evaluation of PECR outputs (docs/method.md §5–§6).

- :mod:`eval.proposals`: CAS + attention of one video -> scored segments (snippet units).
- :mod:`eval.detection`: ActivityNet-protocol detection AP / mAP at many tIoU thresholds (+ CLI).
- :mod:`eval.annotations`: ground truth from the W-TALC folder or ActivityNet JSON (+ converter CLI).
- :mod:`eval.classification`: video-level class scores and classification mAP.
- :mod:`eval.report`: the metrics record, result tables and the best-checkpoint criterion.
- :mod:`eval.scoring`: the scoring half of a test pass (network outputs -> detections, metrics).
- :mod:`eval.raw`: the raw predictions file (``--save-raw``) that scoring can read back.
- :mod:`eval.rescore`: re-scoring a raw predictions file with other post-processing options (CLI).

Tables are pandas DataFrames with columns ``video-id, label, t-start, t-end[, score]``;
``label`` is an integer class index.
"""

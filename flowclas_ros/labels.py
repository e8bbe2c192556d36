"""The label vocabulary shared by datasets, losses and metrics (no imports: usable anywhere).

Every label map in the package, at pixel or feature-grid resolution, holds only these values
(METHOD.md section 9 maps each benchmark's own ids onto them)::

    INLIER  = 0    normal scene content (the negative class of the metrics)
    ANOMALY = 1    an anomaly: a real one in a benchmark, a pasted outlier in training
    VOID    = 255  takes part in no loss and no metric (unlabelled, padding, ambiguous)
"""

INLIER = 0
ANOMALY = 1
VOID = 255

__all__ = ["INLIER", "ANOMALY", "VOID"]

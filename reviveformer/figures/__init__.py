"""Figures of neuron liveness, drawn with matplotlib: one module per job, each importing only `common`.

- `common`: palettes, colour maps, layer and ratio axes, `save_figure`;
- `run`: one run's figures (frequency heatmap, activation histograms, dead ratio per layer and over training,
  a revival per layer, loss curves);
- `compare`: runs side by side (a metric over training, dead ratio per layer, seed bands);
- `plasticity`: a task sequence's end-of-task losses and dead ratio against the task.

Each `*_figure` function builds and returns a bare `matplotlib.figure.Figure` (no pyplot, no display), and the
matching `plot_*` function saves it as a PNG and returns the path. Callers import from `reviveformer.figures`;
the names below are its interface. The report pages that embed them are `reviveformer.pages`'.
"""

from __future__ import annotations

from reviveformer.figures.common import DPI, save_figure
from reviveformer.figures.compare import (
    groups_band_over_training_figure,
    plot_groups_band_over_training,
    plot_runs_dead_ratio_per_layer,
    plot_runs_metric_over_training,
    runs_dead_ratio_per_layer_figure,
    runs_metric_over_training_figure,
)
from reviveformer.figures.plasticity import plasticity_figure, plot_plasticity
from reviveformer.figures.run import (
    activation_histograms_figure,
    dead_ratio_over_training_figure,
    dead_ratio_per_layer_figure,
    frequency_heatmap_figure,
    frequency_matrix,
    loss_curves_figure,
    mark_revivals,
    plot_activation_histograms,
    plot_dead_ratio_over_training,
    plot_dead_ratio_per_layer,
    plot_frequency_heatmap,
    plot_revived_per_layer,
    revived_per_layer_figure,
)

__all__ = [
    "DPI",
    "activation_histograms_figure",
    "dead_ratio_over_training_figure",
    "dead_ratio_per_layer_figure",
    "frequency_heatmap_figure",
    "frequency_matrix",
    "groups_band_over_training_figure",
    "loss_curves_figure",
    "mark_revivals",
    "plasticity_figure",
    "plot_activation_histograms",
    "plot_dead_ratio_over_training",
    "plot_dead_ratio_per_layer",
    "plot_frequency_heatmap",
    "plot_groups_band_over_training",
    "plot_plasticity",
    "plot_revived_per_layer",
    "plot_runs_dead_ratio_per_layer",
    "plot_runs_metric_over_training",
    "revived_per_layer_figure",
    "runs_dead_ratio_per_layer_figure",
    "runs_metric_over_training_figure",
    "save_figure",
]

"""Every method compare can run: hyper-parameter grid, group labels used, reported WGA, runner.

Grids are small (DomainBed-style) and use the original papers' values where they exist; every
point is run and the one with the best validation worst-group accuracy is kept (MaskTune: the best
validation average accuracy, it uses no group labels; DFR: WGA on the held-out half of val). The
grid, the chosen values and the selection rule are written with every result.

Group labels used, train / val (✓✓ = val labels used for fitting as well as for selection):

    ERM ✗/✓  GroupDRO ✓/✓ (reference upper bound)  JTT ✗/✓  DFR ✗/✓✓  AFR ✗/✓  LISA ✓/✓
    MaskTune ✗/✗  DaC ✗/✓  DDB ✗/✓
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raydbb.baselines import afr, dac, dfr, erm, groupdro, jtt, lisa, masktune
from raydbb.baselines.common import SELECTION, MethodContext, MethodResult
from raydbb.config import RaydbbConfig
from raydbb.errors import ConfigError

PAPER_DATASETS = ("waterbirds", "celeba", "metashift")
TRAINING_READS = ("seed", "device", "data", "classifier", "train")
"""What a baseline reads of the config: the data, the classifier and the training recipe; DDB's
own sections are not among them."""
FINETUNE_READS = (*TRAINING_READS, "retrain.epochs", "retrain.lr")
"""... and, for the methods that fine-tune the ERM model (:func:`~raydbb.baselines.common.finetune_config`),
that phase's epochs and lr."""


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    citation: str
    train_labels: str
    val_labels: str
    grid: dict[str, list[Any]]
    run: Callable[[MethodContext, dict[str, list[Any]]], MethodResult]
    needs_erm: bool = False
    """Starts from the same seed's ERM model (compare runs ERM first and shares it)."""
    reference: bool = False
    """Uses train group labels: a reference upper bound, not a competitor."""
    paper_wga: dict[str, float | None] = field(default_factory=dict)
    """Worst-group test accuracy (%) the DDB paper reports, per dataset."""
    reads: tuple[str, ...] | None = TRAINING_READS
    """Config fields (dotted prefixes) the method's result depends on; None = the whole config."""

    @property
    def label(self) -> str:
        return self.title + (" (reference upper bound: uses train group labels)" if self.reference else "")


def _paper(wb: float | None, celeba: float | None, metashift: float | None) -> dict[str, float | None]:
    return dict(zip(PAPER_DATASETS, (wb, celeba, metashift), strict=True))


def _workflow_result(ctx: MethodContext, cfg: RaydbbConfig, run: Callable[..., Any],
                     note: str) -> MethodResult:
    """Run a whole workflow (``run(cfg, progress=False)``) in ``OUT/.../run``; its retrained model's
    metrics are the result."""
    import json

    from raydbb.rundir import RunDir

    cfg = cfg.model_copy(update={"out": str(ctx.out_dir / "run")})
    run(cfg, progress=False)
    ddb_dir = RunDir(cfg.out).ddb
    doc = json.loads((ddb_dir / "metrics.json").read_text())
    return MethodResult({s: doc[s] for s in ("val", "test") if s in doc},
                        {"retrain": cfg.retrain.model_dump(mode="json")},
                        [], ddb_dir, notes=note)


def _run_ddb(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    """The whole DDB workflow (ERM, inversion, generation, retraining) in ``OUT/.../run``."""
    from raydbb.workflow import run_steps

    return _workflow_result(ctx, ctx.cfg, run_steps,
                            "the DDB workflow trains its own ERM model in its run folder")


def _run_oracle(ctx: MethodContext, grid: dict[str, list[Any]]) -> MethodResult:
    """DDB's workflow with the synthetic benchmark's own counterfactuals as the repaints
    (:func:`raydbb.tools.oracle.run_oracle`): what retraining reaches with perfect repaints."""
    from raydbb.tools.oracle import oracle_config, run_oracle

    return _workflow_result(ctx, oracle_config(ctx.cfg), run_oracle,
                            "perfect counterfactual repaints (the benchmark redraws each source with the "
                            "other bird); its own ERM model, no VAE round trip")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("erm", "ERM", "Vapnik 1992", "✗", "✓", {}, erm.run, paper_wga=_paper(74.6, 42.2, 67.0)),
    Method("groupdro", "GroupDRO", "Sagawa et al. 2020", "✓", "✓",
           {"eta": [0.01], "weight_decay": [0.1, 1.0]}, groupdro.run, reference=True,
           paper_wga=_paper(None, None, None)),
    Method("jtt", "JTT", "Liu et al. 2021", "✗", "✓", {"T": [1, 2], "lambda_up": [20, 100]}, jtt.run,
           paper_wga=_paper(86.7, 81.1, 64.6)),
    Method("dfr", "DFR", "Kirichenko et al. 2023", "✗", "✓✓",
           {"C": [1.0, 0.7, 0.3, 0.1, 0.07, 0.03], "n_subsets": [10]}, dfr.run, needs_erm=True,
           paper_wga=_paper(92.9, 88.3, 72.8)),
    Method("afr", "AFR", "Qiu et al. 2023", "✗", "✓",
           {"gamma": [0.0, 2.0, 4.0, 8.0, 16.0], "lambda": [0.0, 0.1, 0.4], "erm_fraction": [0.8]}, afr.run,
           paper_wga=_paper(None, None, None)),
    Method("lisa", "LISA", "Yao et al. 2022", "✓", "✓", {"p_sel": [0.5], "alpha": [2.0]}, lisa.run,
           paper_wga=_paper(89.2, 89.3, 59.8)),
    Method("masktune", "MaskTune", "Asgari et al. 2022", "✗", "✗", {"fraction": [0.1, 0.2]}, masktune.run,
           needs_erm=True, paper_wga=_paper(None, None, None), reads=FINETUNE_READS),
    Method("dac", "DaC", "Noohdani et al. 2024", "✗", "✓", {"low_loss": [0.25], "mask_fraction": [0.25, 0.5]},
           dac.run, needs_erm=True, paper_wga=_paper(92.3, 81.9, 78.3), reads=FINETUNE_READS),
    Method("ddb", "DDB", "arXiv 2503.17226", "✗", "✓", {}, _run_ddb, paper_wga=_paper(93.0, 85.8, 81.2),
           reads=None),
    Method("oracle", "DDB with perfect repaints (upper bound, synthetic benchmark only)", "raydbb", "✗", "✓",
           {}, _run_oracle, reads=None),
]}

PAPER_ONLY = {"disc": ("DISC", _paper(88.7, None, 73.5))}
"""Methods the DDB paper's table reports that raydbb does not run (shown for reference)."""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name]


def resolve_grid(method: Method, overrides: dict[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """The method's grid with ``overrides`` (keys must be the method's own)."""
    grid = {k: list(v) for k, v in method.grid.items()}
    for key, values in (overrides or {}).items():
        if key not in grid:
            raise ConfigError(f"{method.name}: unknown hyper-parameter {key!r}; its grid has {sorted(grid)}")
        grid[key] = list(values)
    return grid


def run_method(name: str, ctx: MethodContext, grid: dict[str, list[Any]] | None = None) -> MethodResult:
    """Run one method on ``ctx`` over its (possibly overridden) grid."""
    method = get_method(name)
    return method.run(ctx, resolve_grid(method, grid))


__all__ = ["METHODS", "PAPER_ONLY", "SELECTION", "Method", "get_method", "resolve_grid", "run_method"]

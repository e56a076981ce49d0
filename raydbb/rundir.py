"""The run folder: one config, one ``OUT``; every name under it is defined here and nowhere else.

    OUT/
      config.yaml            resolved config of the last pipeline run
      .steps/<step>.json     markers of finished steps (fingerprints of their inputs)
      .stale/                outputs of steps that re-ran with changed inputs (never deleted)
      erm/                   ERM checkpoint (classifier.json, model.safetensors, metrics.json)
      token_pool/<class>.csv images each class's token is learned from
      tokens/<class>/        learned token per class; tokens/pool_masks/ their masks
      select/                scores.parquet (per-sample ERM loss), selected.csv (majority proxies)
      tau.json               τ_y of the probability rule (Eq. 3)
      generate_config.yaml   the settings the repaints were made with
      generate_models.json   and the contents of the models they name (a digest per model)
      manifest/ images/ masks/   the generated samples (see raydbb.engine.manifest)
      ddb/                   the retrained (DDB) checkpoint
      tune/                  threshold search: trials.csv, best.yaml
      export/<format>/       raydbb export: the balanced training set for other training stacks
      compare/               raydbb compare: results.csv, table.md, runs/<method>/seed_<k>/result.json
      metrics.json           group metrics of every checkpoint on val and test
      report.html            the run's report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raydbb.engine.names import IMAGES_DIR, MANIFEST_DIR, MASKS_DIR
from raydbb.ids import safe_join, sanitize_id

CONFIG_FILE = "config.yaml"
STEPS_DIR = ".steps"
ROUND_TRIP_DIR = "round_trip"
STALE_DIR = ".stale"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder ``root``; every path is checked to stay inside it."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def _p(self, *parts: str) -> Path:
        return safe_join(self.root, *parts)

    @property
    def config(self) -> Path:
        return self._p(CONFIG_FILE)

    @property
    def steps(self) -> Path:
        return self._p(STEPS_DIR)

    @property
    def stale(self) -> Path:
        return self._p(STALE_DIR)

    @property
    def erm(self) -> Path:
        return self._p("erm")

    @property
    def ddb(self) -> Path:
        return self._p("ddb")

    @property
    def tokens(self) -> Path:
        return self._p("tokens")

    @property
    def pool_masks(self) -> Path:
        return self._p("tokens", "pool_masks")

    @property
    def token_pool(self) -> Path:
        return self._p("token_pool")

    def token_pool_csv(self, class_name: str) -> Path:
        """The token pool list of one class."""
        return self._p("token_pool", f"{sanitize_id(class_name)}.csv")

    @property
    def select(self) -> Path:
        return self._p("select")

    @property
    def scores(self) -> Path:
        return self._p("select", "scores.parquet")

    @property
    def selected(self) -> Path:
        return self._p("select", "selected.csv")

    @property
    def tau(self) -> Path:
        return self._p("tau.json")

    @property
    def generate_config(self) -> Path:
        return self._p("generate_config.yaml")

    @property
    def generate_models(self) -> Path:
        return self._p("generate_models.json")

    @property
    def manifest(self) -> Path:
        return self._p(MANIFEST_DIR)

    @property
    def images(self) -> Path:
        return self._p(IMAGES_DIR)

    @property
    def masks(self) -> Path:
        return self._p(MASKS_DIR)

    @property
    def tune(self) -> Path:
        return self._p("tune")

    def round_trip(self, key: str) -> Path:
        """Originals round-tripped through an inpainter's VAE, one folder per model and setting."""
        return self._p(ROUND_TRIP_DIR, sanitize_id(key))

    @property
    def export(self) -> Path:
        return self._p("export")

    @property
    def compare(self) -> Path:
        return self._p("compare")

    def compare_run(self, method: str, seed: int) -> Path:
        """The folder of one method x seed of ``raydbb compare``."""
        return self._p("compare", "runs", sanitize_id(method), f"seed_{int(seed)}")

    @property
    def metrics(self) -> Path:
        return self._p(METRICS_FILE)

    @property
    def report(self) -> Path:
        return self._p("report.html")

    @property
    def generated(self) -> list[Path]:
        """Everything the generate step writes (moved aside together when it re-runs)."""
        return [self.manifest, self.images, self.masks, self.select, self.tau, self.generate_config,
                self.generate_models]


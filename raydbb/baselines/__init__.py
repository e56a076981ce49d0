"""Baseline methods for spurious-correlation robustness on raydbb's training stack.

Every method trains with the same classifiers, transforms, metrics and validation-WGA model
selection as ERM and DDB (:mod:`raydbb.training`); each module states its rule with the original
paper's equation or algorithm step, as a pure function the tests check by hand:

* :mod:`~raydbb.baselines.groupdro` — GroupDRO (Sagawa et al. 2020), reference upper bound
* :mod:`~raydbb.baselines.jtt` — Just Train Twice (Liu et al. 2021)
* :mod:`~raydbb.baselines.dfr` — Deep Feature Reweighting (Kirichenko et al. 2023)
* :mod:`~raydbb.baselines.afr` — Automatic Feature Reweighting (Qiu et al. 2023)
* :mod:`~raydbb.baselines.lisa` — LISA selective mixup (Yao et al. 2022)
* :mod:`~raydbb.baselines.masktune` — MaskTune (Asgari et al. 2022)
* :mod:`~raydbb.baselines.dac` — Decompose-and-Compose (Noohdani et al. 2024)

:mod:`~raydbb.baselines.registry` holds each method's hyper-parameter grid, the group labels it
uses (train/val) and its runner; :mod:`raydbb.compare` runs them side by side.
"""

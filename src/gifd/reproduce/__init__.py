"""`gifd reproduce`: the paper's experiments for one setting, in one HTML report plus JSON.

`config` holds the setting (`ReproduceConfig`, the built-in one by default), `tables` the
experiments (attack tables as cells of `gifd.experiment.run_experiment`, resumable; the label
table computed directly) and the claim tested from the ablation, `report` the page, and
`run_reproduce` ties them together.
"""

from gifd.reproduce.config import TABLES, DataSet, ReproduceConfig, load_reproduce_config, reproduce_config
from gifd.reproduce.run import RESULTS_NAME, run_reproduce
from gifd.reproduce.tables import GainClaim, gain_claim, label_table, plan

__all__ = [
    "RESULTS_NAME",
    "TABLES",
    "DataSet",
    "GainClaim",
    "ReproduceConfig",
    "gain_claim",
    "label_table",
    "load_reproduce_config",
    "plan",
    "reproduce_config",
    "run_reproduce",
]

"""Cell-cell interaction analysis as in stLearn: LR hotspots (``run``, ``adj_pvals``) and LR databases."""
from .database import LRPairs, load_lrs
from .result import CCIResult
from .run import run
from .adjust import adj_pvals
from .interactions import CCIInteractions, run_cci
from .learned import learned_graph_cci

__all__ = ["load_lrs", "LRPairs", "run", "adj_pvals", "CCIResult", "run_cci", "CCIInteractions",
           "learned_graph_cci"]

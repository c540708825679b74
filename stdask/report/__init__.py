"""Results folders, above the plots in the layers: the CCI report (:func:`cci_report`, what ``stdask report``
writes), the end-to-end demo (:func:`run_demo`, ``stdask demo`` / ``make demo``) and the store summary
(:func:`store_info`, ``stdask info``)."""
from .cci import cci_report
from .demo import run_demo
from .info import store_info

__all__ = ["cci_report", "run_demo", "store_info"]

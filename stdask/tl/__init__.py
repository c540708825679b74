from .grid import grid
from . import metrics
from .spaseg import lr_score, spa_seg, spaseg
from .svg import svg

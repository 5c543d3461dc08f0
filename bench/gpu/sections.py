"""All sections. Importing this module registers them (``common.SECTIONS``).

Their run order is ``plan.SECTION_ORDER``: cheap checks first, the most expensive and least certain probe last,
so a run cut short by the time budget still has the most useful numbers.
"""

from bench.gpu import sec_attention, sec_env, sec_eval, sec_megatron, sec_offload, sec_train  # noqa: F401
from bench.gpu.common import SECTIONS
from bench.gpu.plan import SECTION_ORDER

if set(SECTION_ORDER) != set(SECTIONS):
    raise RuntimeError(f"plan.SECTION_ORDER {SECTION_ORDER} != registered sections {sorted(SECTIONS)}")

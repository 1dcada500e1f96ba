"""The comparison methods FastVID, FlashVID, HoliTom and PruneVid as they were before issue 17's item 4
(aot/methods/{common,fastvid,flashvid,holitom,prunevid}.py at commit d8ff83d, imports made absolute and the
registry calls removed): the oracle of tests/test_methods_peer_costs.py. Not registered, not
imported by the library."""

from .fastvid import fastvid
from .flashvid import flashvid
from .holitom import holitom
from .prunevid import prunevid

__all__ = ["fastvid", "flashvid", "holitom", "prunevid"]

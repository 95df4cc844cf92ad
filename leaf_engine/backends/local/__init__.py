"""The embedded local engine: STAC scenes → best-pixel composites → SL2P → tile COGs (SPEC §2, §8).

    from leaf_engine.backends.local import produce
    result = produce(parse_request(...), out_dir=Path("out"))
"""

from .engine import JobSummary, ProduceError, ProduceResult, produce
from .scenes import SceneError

__all__ = ["JobSummary", "ProduceError", "ProduceResult", "SceneError", "produce"]

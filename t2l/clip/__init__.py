"""The frozen CLIP backbone: weights resolution, any-resolution features, relevancy maps.

Light to import: torch and open_clip are imported by the submodules that need them.
"""

from t2l.clip.spec import ClipSpec

__all__ = ["ClipSpec"]

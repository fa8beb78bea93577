"""t2l: text-driven layered editing of photos and videos (Text2LIVE)."""

__version__ = "0.1.0"

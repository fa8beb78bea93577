"""Layered atlases for video: flow, masks, fitting, the atlas folder, rendering edits."""

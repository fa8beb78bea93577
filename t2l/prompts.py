"""Text prompts: the paper's templates (A.2) and the prompt sets one edit is described by."""

from __future__ import annotations

from dataclasses import dataclass, field

from t2l.errors import UsageError

# Paper A.2: 14 templates for the target (composition) and source texts.
COMP_TEMPLATES = (
    "photo of {}.",
    "high quality photo of {}.",
    "a photo of {}.",
    "the photo of {}.",
    "image of {}.",
    "an image of {}.",
    "high quality image of {}.",
    "a high quality image of {}.",
    "the {}.",
    "a {}.",
    "{}.",
    "{}",
    "{}!",
    "{}...",
)
# Two templates for the green-screen text.
SCREEN_TEMPLATES = ("{} over a green screen.", "{} in front of a green screen.")


def clean_prompt(text: str, what: str = "prompt") -> str:
    """Strip and validate one prompt; empty or whitespace-only fails with a usage error."""
    t = " ".join(str(text).split())
    if not t:
        raise UsageError(f"the {what} is empty", f"give a non-empty {what}, e.g. 'fire'")
    return t


@dataclass(frozen=True)
class PromptSet:
    """The texts of one edit. comp[i] and src[i] are paired (directional loss); lists are non-empty.

    comp: what the composite should show ("rusty jeep"); src: what the input shows ("jeep");
    screen: what the edit layer alone shows over a green screen; roi: the region to bootstrap
    the alpha from (no template), or None for no bootstrap.
    """

    comp: tuple[str, ...]
    src: tuple[str, ...]
    screen: tuple[str, ...]
    roi: str | None = None
    templates: tuple[str, ...] = field(default=COMP_TEMPLATES)
    screen_templates: tuple[str, ...] = field(default=SCREEN_TEMPLATES)

    def comp_texts(self) -> list[str]:
        """All templated comp texts; index i pairs with src_texts()[i]."""
        return [t.format(p) for p in self.comp for t in self.templates]

    def src_texts(self) -> list[str]:
        srcs = [self.src[i % len(self.src)] for i in range(len(self.comp))]
        return [t.format(p) for p in srcs for t in self.templates]

    def screen_texts(self) -> list[str]:
        return [t.format(p) for p in self.screen for t in self.screen_templates]

    def to_dict(self) -> dict:
        return {"comp": list(self.comp), "src": list(self.src), "screen": list(self.screen), "roi": self.roi}


def make_prompts(
    prompt: str,
    more: list[str] | None = None,
    roi: str | None = None,
    screen: list[str] | str | None = None,
    src: list[str] | str | None = None,
) -> PromptSet:
    """Build a PromptSet from CLI-style values. Defaults: screen = comp prompts, src = roi text or "photo"."""
    comp = [clean_prompt(prompt)] + [clean_prompt(m, "--prompt text") for m in (more or [])]
    roi_t = clean_prompt(roi, "--roi text") if roi is not None else None
    as_list = lambda v: [v] if isinstance(v, str) else list(v or [])  # noqa: E731
    screen_l = [clean_prompt(s, "--screen text") for s in as_list(screen)] or comp
    src_l = [clean_prompt(s, "--src text") for s in as_list(src)] or [roi_t or "photo"]
    return PromptSet(tuple(comp), tuple(src_l), tuple(screen_l), roi_t)

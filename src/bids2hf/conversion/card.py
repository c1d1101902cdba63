"""The card of a conversion: the BIDS README it quotes and the user section it keeps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bids2hf.errors import DestinationError
from bids2hf.model.format import (
    DATASET_FILES_PREFIX,
)
from bids2hf.publish.compare import read_remote
from bids2hf.report.card import CardInputs, render_card
from bids2hf.report.card_facts import UserSectionError, extract_user_section

if TYPE_CHECKING:
    from bids2hf.conversion.run import ConversionRun

__all__ = ["USER_SECTION_FILE", "card_bytes", "user_section_of_card"]


_README_NAMES = ("README", "README.md", "README.rst", "README.txt")


#: The user section of the card being replaced, saved in .bids2hf/ (never published) until the
#: new card holds it.
USER_SECTION_FILE = "user-section.md"


def user_section_of_card(run: ConversionRun) -> str | None:
    """The user section of the card this run replaces (None if none): the destination's when
    publishing (the user may have edited it there), else the folder's, if bids2hf wrote it.

    Raises:
        DestinationError: its markers are broken (fixing them first keeps the user's text), or
            the destination's card cannot be read.
    """
    card = run.out.root / "README.md"
    remote = run.remote
    try:
        if remote is not None and "README.md" in remote.remote and "README.md" in remote.owned:
            where = f"{remote.url}/README.md"
            text = read_remote(remote.target, "README.md").decode("utf-8", errors="replace")
        elif "README.md" in run.out.owned and card.is_file():
            where, text = str(card), card.read_text(encoding="utf-8", errors="replace")
        else:
            return None
        return extract_user_section(text)
    except UserSectionError as exc:
        raise DestinationError(f"{where}: {str(exc).removeprefix('README.md: ')}") from None
    except Exception as exc:
        raise DestinationError(
            f"{where}: cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it holds your "
            "user section: re-run later"
        ) from None


def card_bytes(run: ConversionRun, manifest: bytes) -> bytes:
    """The card, once the dataset-level files are in the folder: the README is read from there,
    and the user section from the card this run replaces (only one bids2hf wrote).

    Raises:
        DestinationError: the previous card's user-section markers are broken.
    """
    out = run.out
    names = {f.relpath for f in run.plan.dataset_files}
    readme_rel = next((n for n in _README_NAMES if n in names), None)
    readme_path = out.root / DATASET_FILES_PREFIX / readme_rel if readme_rel else None
    card_path, saved = out.root / "README.md", out.state_dir / USER_SECTION_FILE
    previous = None
    if saved.is_file():  # saved by _prepare (or by a killed run, its card removed since)
        previous = saved.read_text(encoding="utf-8")
    elif "README.md" in out.owned and card_path.is_file():
        previous = card_path.read_text(encoding="utf-8", errors="replace")
    inputs = CardInputs(
        manifest=manifest,
        readme=(readme_path.read_text(encoding="utf-8", errors="replace") if readme_path else None),
        readme_path=f"{DATASET_FILES_PREFIX}{readme_rel or 'README'}",
        participants=run.report.inventory.participants,
        previous=previous,
        headers={f.relpath: f.header for f in run.report.inventory.files if f.header},
        previews=run.previews,
    )
    try:
        text = render_card(run.plan, run.report.inventory.description, run.repo_hint, inputs)
    except UserSectionError as exc:
        raise DestinationError(f"{card_path}: {str(exc).removeprefix('README.md: ')}") from None
    return text.encode()

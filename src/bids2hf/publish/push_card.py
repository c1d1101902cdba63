"""``push``: the card it uploads names the destination repository and keeps the user section
written on the destination.

A folder converted locally has a card whose code samples name :data:`REPO_PLACEHOLDER`; pushed
to a Hub repository, they name that repository (as a conversion straight to it writes them).

A conversion to a remote takes the user section from the destination's card (someone may have
written there on the Hub). ``push`` uploads a folder converted earlier, whose card holds the
section as it was then: uploaded as is, it replaced the text written on the Hub since. The card
pushed is the folder's with the destination's section, unless the destination's section is
still the placeholder (then the folder's, perhaps edited locally, is the one to publish).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from bids2hf.errors import DestinationError
from bids2hf.model.format import (
    REPO_PLACEHOLDER,
    USER_PLACEHOLDER,
    UserSectionError,
    sha256_file,
    user_section_span,
)
from bids2hf.publish.compare import card_identities, read_remote
from bids2hf.publish.targets.base import RemoteFile, StagedFile, Target
from bids2hf.write.state_store import StateStore

__all__ = [
    "card_keeping_remote_section",
    "card_naming_repository",
    "folder_card_id",
    "record_card",
]

log = logging.getLogger(__name__)
#: The prefix of :func:`folder_card_id`'s records (no remote file has such an identity).
_FOLDER = "folder:"


def _section(text: str, where: str) -> tuple[int, int] | None:
    """:func:`~bids2hf.model.format.user_section_span`, for a card about to be pushed.

    Raises:
        DestinationError: its markers are broken (rewriting the card could lose text).
    """
    try:
        return user_section_span(text, where)
    except UserSectionError as exc:
        raise DestinationError(str(exc)) from None


def _merged_text(
    raw: bytes,
    card: StagedFile,
    recorded: Collection[str],
    where: str,
    unnamed: StagedFile | None = None,
) -> str | None:
    """The folder's card with the destination's user section (``raw``: the destination's card),
    or None when the folder's card is the one to publish as it is (see
    :func:`card_keeping_remote_section`).

    Raises:
        DestinationError: the user-section markers of either card are broken.
    """
    theirs = raw.decode("utf-8", errors="replace")
    ours = card.local.read_text(encoding="utf-8", errors="replace")
    their_span, our_span = _section(theirs, where), _section(ours, str(card.local))
    if their_span is None or our_span is None:
        return None
    section = theirs[their_span[0] : their_span[1]]
    if section in (USER_PLACEHOLDER, ours[our_span[0] : our_span[1]]):
        return None
    last_folder = {r.removeprefix(_FOLDER) for r in recorded if r.startswith(_FOLDER)}
    # (``unnamed``: the folder's card before :func:`card_naming_repository`, as a push of an
    # earlier version recorded it)
    ids = {folder_card_id(c) for c in (card, unnamed) if c is not None}
    folder_edited = bool(last_folder) and not ids & set(recorded)
    if folder_edited and f"sha256:{hashlib.sha256(raw).hexdigest()}" in last_folder:
        # The destination holds the folder's card of the last push, untouched: the folder's
        # section was edited here since, and is the one to publish.
        return None
    if folder_edited:  # edited here, and the destination holds text the folder never had
        log.warning(
            "%s: the user section was edited here, and the destination's holds text this "
            "folder does not; the destination's is kept, the folder's is not pushed (copy "
            "yours into the card on the destination)",
            where,
        )
    return ours[: our_span[0]] + section + ours[our_span[1] :]


#: How the lines of the card's "## Loading" section that name the repository start (written by
#: report/card.py and report/card_render.py)
_SAMPLES = (
    'ds = load_dataset("{}"',
    'previews = load_dataset("{}"',
    "pip install bids2hf && bids2hf export hf://datasets/{} ",
)


def _naming(text: str, repo_id: str) -> str:
    """``text`` (a card) with the code samples of its "## Loading" section naming ``repo_id``
    instead of :data:`REPO_PLACEHOLDER`. Only that section, bids2hf's, is changed: it is the last
    "## Loading" heading (the dataset's README quoted above it has its headings demoted, and the
    user section comes before it too), up to the next level-2 heading. Never raises."""
    lines = text.split("\n")
    headings: list[int] = []  # the level-2 headings, outside code blocks
    fence = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        elif not fence and line.startswith("## "):
            headings.append(i)
    loading = [i for i in headings if lines[i].rstrip("\r") == "## Loading"]
    if not loading:
        return text
    first = loading[-1]
    last = next((i for i in headings if i > first), len(lines))
    old = [form.format(REPO_PLACEHOLDER) for form in _SAMPLES]
    new = [form.format(repo_id) for form in _SAMPLES]
    for i in range(first + 1, last):
        for before, after in zip(old, new, strict=True):
            if lines[i].startswith(before):
                lines[i] = after + lines[i][len(before) :]
    return "\n".join(lines)


@contextlib.contextmanager
def card_naming_repository(
    files: Sequence[StagedFile], repo_id: str | None
) -> Iterator[list[StagedFile]]:
    """``files``, their card (``README.md``) replaced, while the context lasts, by one whose code
    samples name ``repo_id`` where they name :data:`REPO_PLACEHOLDER` (a folder converted
    locally, see :func:`_naming`); as they are if ``repo_id`` is None (not a Hub repository) or
    nothing changes. Raises OSError if the card cannot be read or its copy written."""
    out = list(files)
    card = next((f for f in out if f.path == "README.md"), None)
    if card is None or repo_id is None:
        yield out
        return
    raw = card.local.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # (bids2hf writes UTF-8; someone else's card is left as it is)
        yield out
        return
    named = _naming(text, repo_id)
    if named == text:
        yield out
        return
    with _card_replaced(out, card, named) as replaced:
        yield replaced


@contextlib.contextmanager
def card_keeping_remote_section(
    target: Target,
    remote: dict[str, RemoteFile],
    owned: Collection[str],
    files: Sequence[StagedFile],
    recorded: Collection[str] = frozenset(),
    unnamed: Sequence[StagedFile] = (),
) -> Iterator[list[StagedFile]]:
    """``files``, their card (``README.md``) replaced, while the context lasts, by one that
    holds the user section of the destination's card when that card is bids2hf's (in
    ``owned``) and its section was written in (is no placeholder) and differs.

    ``recorded``: the identities of the cards pushed before (:func:`record_card`), with
    :func:`folder_card_id` of the folder's card then. The folder's section wins when the
    destination still holds the folder's card of the last push and the folder's changed since
    (an edit made here); when the destination holds text the folder never had (written there,
    or kept there at the last push), its section is kept and a warning says the folder's edit
    was not pushed. ``unnamed``: the folder's files before :func:`card_naming_repository`
    (whose card, unnamed, is the one an earlier version recorded).

    Raises:
        DestinationError: the user-section markers of either card are broken, or the
            destination's card cannot be read (it holds the user's text: re-run later).
    """
    out = list(files)
    card = next((f for f in out if f.path == "README.md"), None)
    if card is None or "README.md" not in remote or "README.md" not in owned:
        yield out
        return
    where = f"{target.url}/README.md"
    try:
        raw = read_remote(target, "README.md")
    except Exception as exc:
        raise DestinationError(
            f"{where}: cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it holds your "
            "user section: re-run later"
        ) from None
    original = next((f for f in unnamed if f.path == "README.md"), None)
    text = _merged_text(raw, card, recorded, where, original)
    if text is None:
        yield out
        return
    with _card_replaced(out, card, text) as replaced:
        yield replaced


@contextlib.contextmanager
def _card_replaced(
    files: list[StagedFile], card: StagedFile, text: str
) -> Iterator[list[StagedFile]]:
    """``files``, ``card`` replaced while the context lasts by a temporary copy holding
    ``text``. Raises OSError if the copy cannot be written."""
    with tempfile.TemporaryDirectory(prefix="bids2hf-card-") as tmp:
        path = Path(tmp) / "README.md"
        path.write_bytes(text.encode("utf-8"))
        staged = StagedFile("README.md", path, path.stat().st_size, sha256_file(path))
        yield [staged if f is card else f for f in files]


def folder_card_id(card: StagedFile) -> str:
    """What is recorded of the folder's own card at a push (to tell, at the next push, whether
    its user section was edited here since)."""
    return f"{_FOLDER}sha256:{card.checksum()}"


def record_card(
    store: StateStore | None,
    url: str,
    card: StagedFile | None,
    recorded: set[str],
    folder_card: StagedFile | None = None,
) -> set[str]:
    """Record the card about to be pushed with the earlier one, before the commit (as in
    :meth:`RemoteRun.finish`); its identities, with ``folder_card``'s
    (:func:`folder_card_id`). Raises OSError if the record cannot be written."""
    if store is None or card is None:
        return set()
    ids = card_identities(card.local)
    if folder_card is not None:
        ids.add(folder_card_id(folder_card))
    store.record_published_card(url, recorded | ids)
    return ids

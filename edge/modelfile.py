"""What a ``.tflite`` file says about itself: labels, input size, normalisation.

edgetl appends a small zip archive to the TFLite flatbuffer (interpreters
ignore trailing bytes; ``zipfile`` finds an archive at the end of any file).
It holds ``labels.txt`` and ``edgetl.json``, so a device needs the one file
and the standard library to know what the model's outputs mean. Entries are
*stored*, not deflated: MediaPipe refuses compressed associated files.

A model file may come from anyone, so the archive is read defensively: each
member costs at most ``MAX_MEMBER_BYTES`` however it is compressed (a deflate
bomb or a lying header), the card must have the types the runner relies on
(``check_card``), and labels come back exactly as written (``parse_labels``)
except for one thing: every string of a card or a labels file, labels
included, has its control characters escaped (``printable``) before any of it
can reach a terminal, a CSV cell or a log. A label ``\x1b[31mred`` from
someone's model shows as those characters instead of recolouring the
terminal; labels edgetl's own training accepts (``label_problem``) never
contain one, so its models read back unchanged.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edge import jsonfile
from edge.atomic import finite_only
from edge.errors import BadInput
from edge.image import RESIZE_FILTERS, describe_error, one_line

METADATA_NAME = "edgetl.json"
LABELS_NAME = "labels.txt"
# edgetl writes two small members (MediaPipe adds a few): far below both bounds.
MAX_MEMBER_BYTES = 4 * 2**20
MAX_MEMBERS = 64
NOT_OURS = "this is not a card edgetl wrote"
CARD_TYPES = {  # key: (accepted type, its name in a message)
    "quant": (str, "a string"),
    "io": (str, "a string"),
    "input": (dict, "an object"),
    "float_layers": (list, "a list"),
    "parity": (dict, "an object"),
    "train": (dict, "an object"),
    "calibration": (dict, "an object"),
}


@dataclass
class ModelCard:
    """Everything the runner needs besides the interpreter."""

    labels: List[str]
    labels_source: str  # "embedded", "labels.txt beside the model" or "class indices"
    metadata: Dict[str, Any] = field(default_factory=dict)


def unsafe_char(char: str) -> bool:
    """A character that breaks lines or drives a terminal: C0/C1 controls (ESC, BEL,
    CR, CSI ``\\x9b``...), line and paragraph separators, anything ``splitlines`` breaks at."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or len((char + "x").splitlines()) != 1


def printable(text: str) -> str:
    """``text`` with each ``unsafe_char`` written as its Python escape (``\\x1b``, ``\\r``,
    ``\\u2028``), so text from someone else's file can be printed or put in a CSV cell:
    a label ``\\x1b[2J`` must show as those characters, not clear the user's screen."""
    if not any(unsafe_char(char) for char in text):
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unsafe_char(char) else char
        for char in text
    )


def printable_card(value: Any) -> Any:
    """Every string in a parsed card (keys too) through ``printable``."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [printable_card(item) for item in value]
    if isinstance(value, dict):
        return {printable(str(key)): printable_card(item) for key, item in value.items()}
    return value


def label_problem(name: str) -> Optional[str]:
    """Why class name ``name`` cannot round-trip through labels.txt, CSV and Markdown, or None.

    labels.txt holds one name per line, so a name must not contain anything
    a reader may take for a line break (Python's ``splitlines`` also breaks at
    U+2028, U+0085, \\x1c...) nor any control character; and names are compared
    exactly, so leading or trailing spaces would be invisible differences.
    """
    if not name:
        return "the name is empty"
    for char in name:
        if unsafe_char(char):
            what = unicodedata.name(char, "a control character")
            return f"the name holds U+{ord(char):04X} ({what}), which breaks lines or tables"
    if name != name.strip():
        return "the name starts or ends with whitespace"
    return None


def parse_labels(text: str) -> List[str]:
    """One label per ``\\n``-separated line, exactly as written.

    Only a trailing ``\\r`` per line (a file saved on Windows) and the empty
    lines at the very end are dropped: a blank line inside the file is a
    class too, or every later label would shift to the wrong output.
    """
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def check_card(card: object) -> Optional[str]:
    """What is wrong with a parsed ``edgetl.json``, or None.

    Keys are optional (older exports lack some), but a key that is present
    must have the type the runner uses it as; anything else fails later and
    far from the cause, or in the decode thread.
    """
    if not isinstance(card, dict):
        return f"a JSON {type(card).__name__}, not an object"
    labels = card.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return "labels is not a list of strings"
    size = card.get("image_size", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return f"image_size {size!r} is not a positive whole number"
    for key, (kind, kind_name) in CARD_TYPES.items():
        if key in card and not isinstance(card[key], kind):
            return f"{key} is not {kind_name}"
    resize = card.get("input", {}).get("resize_filter", "bilinear")
    if not isinstance(resize, str) or resize not in RESIZE_FILTERS:
        return f"input.resize_filter {resize!r} is not one of {', '.join(RESIZE_FILTERS)}"
    return None


def embed_metadata(tflite_bytes: bytes, metadata: Dict[str, Any], labels: List[str]) -> bytes:
    """Return ``tflite_bytes`` with ``labels.txt`` and ``edgetl.json`` appended as a zip."""
    buffer = io.BytesIO(tflite_bytes)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, mode="a", compression=zipfile.ZIP_STORED) as archive:
        names = set(archive.namelist())
        if LABELS_NAME not in names:  # a second labels.txt would silently replace the first
            archive.writestr(LABELS_NAME, "\n".join(labels) + "\n")
        strict, _ = finite_only(metadata)  # a non-finite figure is written as null
        archive.writestr(
            METADATA_NAME, json.dumps(strict, indent=2, sort_keys=True, allow_nan=False)
        )
    return buffer.getvalue()


def _read_member(archive: zipfile.ZipFile, name: str, path: str | os.PathLike) -> bytes:
    """At most ``MAX_MEMBER_BYTES`` of one member, whatever its header claims."""
    try:
        with archive.open(name) as member:
            data = member.read(MAX_MEMBER_BYTES + 1)
    except Exception as error:  # zlib.error, a bad CRC, encryption, an unknown method...
        raise BadInput(
            f"{path}: its embedded {name} cannot be read ({describe_error(error)}); "
            "export the model again with edgetl export"
        ) from error
    if len(data) > MAX_MEMBER_BYTES:
        raise BadInput(f"{path}: its embedded {name} is over 4 MiB; {NOT_OURS}")
    return data


def _member_text(archive: zipfile.ZipFile, name: str, path: str | os.PathLike) -> str:
    try:
        return _read_member(archive, name, path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: its embedded {name} is not UTF-8 text; {NOT_OURS}") from error


def parse_card(text: str, path: str | os.PathLike) -> Dict[str, Any]:
    """``edgetl.json`` parsed and checked; BadInput naming ``path`` otherwise."""
    try:
        card = jsonfile.parse(text)  # bounded depth, no NaN/Infinity
        problem = check_card(card)
    except RecursionError:
        problem = "nested too deeply"
    except ValueError as error:
        problem = f"not JSON: {one_line(error)}"
    if problem:
        raise BadInput(
            f"{path}: its embedded card {METADATA_NAME} is not valid ({problem}); "
            "export the model again with edgetl export"
        )
    return card


def read_embedded(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The archive's ``edgetl.json`` plus ``labels`` from ``labels.txt``, every string
    ``printable``; None if absent.

    A file without an archive is a plain model (None); an archive that is
    there but damaged, oversized or odd is BadInput naming the file.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_MEMBERS:
            raise BadInput(
                f"{path}: its appended archive has {len(entries)} entries, over {MAX_MEMBERS}; "
                f"{NOT_OURS}"
            )
        names = {entry.filename for entry in entries}
        found: Dict[str, Any] = {}
        if METADATA_NAME in names:
            found.update(parse_card(_member_text(archive, METADATA_NAME, path), path))
        if LABELS_NAME in names:
            found["labels"] = parse_labels(_member_text(archive, LABELS_NAME, path))
        return printable_card(found) or None


def read_labels_file(path: str | os.PathLike) -> List[str]:
    """A labels.txt beside a model: read like the embedded one, within the same bound."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_MEMBER_BYTES + 1)
    except OSError as error:
        raise BadInput(f"{path}: cannot be read ({error.strerror or error})") from error
    if len(data) > MAX_MEMBER_BYTES:
        raise BadInput(f"{path}: over 4 MiB, too large for a labels file; give one name per line")
    try:
        return [printable(label) for label in parse_labels(data.decode("utf-8"))]
    except UnicodeDecodeError as error:
        raise BadInput(f"{path}: not UTF-8 text; save it as UTF-8, one name per line") from error


def read_model_card(model_path: str | os.PathLike, num_outputs: Optional[int] = None) -> ModelCard:
    """Labels and metadata: embedded first, then ``labels.txt`` beside, then indices."""
    embedded = read_embedded(model_path) or {}
    if embedded.get("labels"):
        card = ModelCard(list(embedded["labels"]), "embedded", embedded)
    else:
        beside = Path(model_path).with_name(LABELS_NAME)
        if beside.is_file():
            card = ModelCard(read_labels_file(beside), f"{beside}", embedded)
        elif num_outputs:
            card = ModelCard([str(i) for i in range(num_outputs)], "class indices", embedded)
        else:
            card = ModelCard([], "class indices", embedded)
    if num_outputs is not None and card.labels and len(card.labels) != num_outputs:
        raise BadInput(
            f"{model_path}: {len(card.labels)} labels ({card.labels_source}) but the model has "
            f"{num_outputs} outputs; export it again or fix {LABELS_NAME}"
        )
    return card

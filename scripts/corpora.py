"""Build, offline, the corpora that docs/results.md and docs/training.md measure on, from text every Debian machine
with Python has: the Python standard library's sources, the man pages, Vim's manual, Perl's manual.

    python scripts/corpora.py OUT_DIR              # every corpus below
    python scripts/corpora.py OUT_DIR stdlib-1mb   # some of them

Each corpus is a deterministic slice (files in sorted order, cut at a line end at the size given) written as one
UTF-8 file, and, with ``--folders``, also as a folder of the files it came from (the same text, cut the same
way), for ``textrnn train --corpus DIR``. The sha1 of each file is printed, so a figure can be traced to its
text. A source that is missing on this machine is reported and skipped.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MB = 1_000_000


def stdlib_files() -> Iterator[tuple[str, str]]:
    """The standard library's own modules (no tests, no site-packages), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        if not skip & set(path.relative_to(root).parts):
            yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace")


ROFF_REQUEST = re.compile(r"^\.\S*\s?")
ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\[&-e|^]")


def man_files(sections: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """Man pages as text: each page's roff source with requests and font escapes taken out (the words stay)."""
    for section in sections:
        for path in sorted(Path("/usr/share/man", f"man{section}").glob("*.gz")):
            try:
                source = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
            except (OSError, EOFError):
                continue
            lines = []
            for line in source.splitlines():
                if line.startswith(('.\\"', "'\\\"")):
                    continue
                text = ROFF_ESCAPE.sub("", ROFF_REQUEST.sub("", line) if line.startswith(".") else line).strip()
                if text:
                    lines.append(text)
            yield f"man{section}/{path.name.removesuffix('.gz')}", "\n".join(lines) + "\n"


def text_files(folder: str, pattern: str) -> Iterator[tuple[str, str]]:
    for path in sorted(Path(folder).glob(pattern)):
        yield path.name, path.read_text(encoding="utf-8", errors="replace")


# name -> (what it is, its source files, size in bytes, files to skip first so that slices do not overlap)
CORPORA = {
    "stdlib-1mb": ("Python standard library sources", lambda: stdlib_files(), 1 * MB, 0),
    "stdlib-10mb": ("Python standard library sources", lambda: stdlib_files(), 10 * MB, 0),
    "vimdoc-1mb": ("Vim's manual", lambda: text_files("/usr/share/vim/vim90/doc", "*.txt"), 1 * MB, 0),
    "vimdoc-9mb": ("Vim's manual", lambda: text_files("/usr/share/vim/vim90/doc", "*.txt"), 9 * MB, 0),
    "perlpod-300kb": ("Perl's manual (pod)", lambda: text_files("/usr/share/perl/5.36.0/pod", "*.pod"), 300_000, 0),
    "man7-50kb": ("man pages, section 7 (overviews)", lambda: man_files(("7",)), 50_000, 0),
    "man1-10mb": ("man pages, section 1 (commands)", lambda: man_files(("1",)), 10 * MB, 0),
    "man-50mb": ("man pages, sections 2-8", lambda: man_files(("2", "3", "4", "5", "6", "8")), 50 * MB, 0),
}


def build(name: str, out: Path, folders: bool) -> None:
    description, files, size, _ = CORPORA[name]
    pieces, total = [], 0
    for relative, text in files():
        if total >= size:
            break
        room = size - total
        if len(text.encode()) > room:  # cut at a line end
            text = text.encode()[:room].decode("utf-8", errors="ignore")
            text = text[: text.rfind("\n") + 1] or text
        pieces.append((relative, text))
        total += len(text.encode())
    if not pieces:
        print(f"{name}: no source files on this machine ({description}); skipped", file=sys.stderr)
        return
    joined = "".join(text for _, text in pieces)
    path = out / f"{name}.txt"
    path.write_text(joined, encoding="utf-8")
    if folders:
        for relative, text in pieces:
            target = out / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    print(f"{path}  {len(joined.encode()):,} bytes from {len(pieces)} files of {description}  sha1 {digest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("names", nargs="*", choices=[[], *CORPORA], help="corpora to build (default: all)")
    parser.add_argument("--folders", action="store_true", help="also write each corpus as a folder of its files")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    for name in arguments.names or CORPORA:
        build(name, arguments.out, arguments.folders)


if __name__ == "__main__":
    main()

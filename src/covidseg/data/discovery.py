"""Discovery of the COVID-QU-Ex infection segmentation layout.

``Infection Segmentation Data/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,infection masks,lung masks}/``

Accepted roots: the dataset root that holds ``Infection Segmentation Data``, that folder itself,
and the doubly nested ``Infection Segmentation Data/Infection Segmentation Data`` of the public
download. Folder and file names are matched case-insensitively (the real data has
``Non_COVID (N).png`` beside ``non_COVID (N).png``). Discovery yields records, not pixels.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from covidseg.data.image_io import IMAGE_SUFFIXES
from covidseg.errors import DataError
from covidseg.groups import GROUPS

log = logging.getLogger(__name__)

SPLITS = ("Train", "Val", "Test")
DATASET_FOLDER = "Infection Segmentation Data"
IMAGES, INFECTION, LUNG = "images", "infection masks", "lung masks"
# 'covidseg synth' marks its output with this file inside the dataset folder.
MARKER = "SYNTHETIC.json"
MARKER_NOTE = "synthetic phantoms written by 'covidseg synth': a test fixture, not X-rays; never report them as results"
LAYOUT_HINT = (
    f"expected '{DATASET_FOLDER}/{{Train,Val,Test}}/{{COVID-19,Non-COVID,Normal}}/"
    f"{{images,infection masks,lung masks}}/'; run 'covidseg synth DIR' to write a synthetic set in this layout"
)


@dataclass(frozen=True)
class Sample:
    """One X-ray: where its files are and which split and group it belongs to."""

    id: str
    split: str
    group: str
    image: Path
    infection: Path
    lung: Path | None


@dataclass
class Discovery:
    """The samples found under a root, and the files left out with the reason."""

    root: Path
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        """True for a set written by ``covidseg synth`` (it carries the marker file)."""
        return (self.root / MARKER).is_file()

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(x.split == s for x in self.samples)]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {group: n}} for every split found."""
        out: dict[str, dict[str, int]] = {}
        for split in self.splits:
            c = Counter(s.group for s in self.split(split))
            out[split] = {g: c.get(g, 0) for g in GROUPS}
        return out

    def table(self) -> str:
        """A plain-text table of counts per split and group."""
        head = f"{'split':<6} " + " ".join(f"{g:>9}" for g in GROUPS) + f" {'total':>7}"
        rows = [head, "-" * len(head)]
        for split, c in self.counts().items():
            rows.append(f"{split:<6} " + " ".join(f"{c[g]:>9}" for g in GROUPS) + f" {sum(c.values()):>7}")
        reasons = Counter(reason for _, reason in self.skipped)
        for reason, n in sorted(reasons.items()):
            rows.append(f"skipped {n}: {reason}")
        return "\n".join(rows)


def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders keyed by lower-case name."""
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else {}


def _has_splits(folder: Path) -> bool:
    kids = _children(folder)
    return any(s.lower() in kids and _children(kids[s.lower()]).keys() & {g.lower() for g in GROUPS} for s in SPLITS)


def find_dataset_folder(root: str | Path) -> Path:
    """Locate the folder that holds the split folders, from any accepted root."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; {LAYOUT_HINT}")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder; {LAYOUT_HINT}")
    candidates = [root]
    for _ in range(2):  # root/ISD and root/ISD/ISD
        nxt = _children(candidates[-1]).get(DATASET_FOLDER.lower())
        if nxt is None:
            break
        candidates.append(nxt)
    for folder in reversed(candidates):
        if _has_splits(folder):
            return folder
    if not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty; {LAYOUT_HINT}")
    raise DataError(f"{root} is not a COVID-QU-Ex folder; {LAYOUT_HINT}")


def _files(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def _by_stem(files: dict[str, Path]) -> dict[str, Path]:
    """Image files keyed by lower-case stem; a stem held by two image files is left out (ambiguous)."""
    seen: dict[str, list[Path]] = {}
    for p in files.values():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            seen.setdefault(p.stem.lower(), []).append(p)
    return {stem: ps[0] for stem, ps in seen.items() if len(ps) == 1}


def _mask_for(image: Path, files: dict[str, Path], stems: dict[str, Path]) -> Path | None:
    """The mask with the image's file name, else the one mask image with the same stem (``x.jpg`` -> ``x.png``)."""
    return files.get(image.name.lower()) or stems.get(image.stem.lower())


def discover(root: str | Path, splits: tuple[str, ...] | list[str] | None = None) -> Discovery:
    """Walk the COVID-QU-Ex tree and pair images with their masks.

    A mask has its image's file name or, failing that, its stem with another image suffix
    (``x.jpg`` with ``x.png``, as in a compact copy). Images without an infection mask are left
    out (listed in ``skipped``); images without a lung mask are kept with ``lung=None``. Files
    that are not images by their suffix are skipped.

    Raises:
        DataError: the root is missing, empty, not in the layout, or holds no images.
    """
    folder = find_dataset_folder(root)
    split_dirs = _children(folder)
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for split in SPLITS:
        if splits is not None and split not in splits:
            continue
        sdir = split_dirs.get(split.lower())
        if sdir is None:
            continue
        group_dirs = _children(sdir)
        for group in GROUPS:
            gdir = group_dirs.get(group.lower())
            if gdir is None:
                continue
            kinds = _children(gdir)
            images = _files(kinds.get(IMAGES))
            infection = _files(kinds.get(INFECTION))
            lung = _files(kinds.get(LUNG))
            infection_stems, lung_stems = _by_stem(infection), _by_stem(lung)
            for key in sorted(images):
                path = images[key]
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    skipped.append((path, "not an image file by its name"))
                    continue
                mask = _mask_for(path, infection, infection_stems)
                if mask is None:
                    skipped.append((path, "no infection mask with the same file name or stem"))
                    continue
                samples.append(
                    Sample(
                        id=f"{split}/{group}/{path.stem}",
                        split=split,
                        group=group,
                        image=path,
                        infection=mask,
                        lung=_mask_for(path, lung, lung_stems),
                    )
                )
    if not samples:
        wanted = f" for split(s) {', '.join(splits)}" if splits else ""
        raise DataError(f"no images with infection masks found under {folder}{wanted}; {LAYOUT_HINT}")
    if skipped:
        log.warning(
            "skipped %d image(s) under %s: %s",
            len(skipped),
            folder,
            "; ".join(f"{n} {r}" for r, n in Counter(r for _, r in skipped).items()),
        )
    return Discovery(root=folder, samples=samples, skipped=skipped)

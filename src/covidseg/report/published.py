"""Published results beside covidseg's, one column per metric definition, so that no column mixes
definitions."""

from __future__ import annotations

from typing import Any

from covidseg.document import Document
from covidseg.report.describe import INFECTION_COLUMNS

# Published numbers, each with its definition as far as the source states it.
PAPER = "COVID-QU-Ex paper (Tahir et al., Computers in Biology and Medicine 139, 2021)"
LABWORK = "reference labwork (small U-Net, 256x256, 30 epochs)"
QATA = "QaTa-COV19 results (another data set)"
PUBLISHED_NOTES = [
    f"**{PAPER}**: infection IoU 83.05%, Dice 88.21%; lung IoU 96.11%, Dice 97.99%; COVID-19 detection "
    "sensitivity and specificity above 99%. The abstract does not define the metrics; that IoU and Dice are far "
    "apart (a pooled pair would satisfy Dice = 2 IoU / (1 + IoU), 90.7% for IoU 83.05%) implies per-image means. "
    "The images averaged over (COVID-19 only, or all) are not stated.",
    f"**{LABWORK}**: Val pixel accuracy 0.95-0.97, IoU 0.60-0.75, Dice 0.70-0.85; definitions not stated.",
    f"**{QATA}**: on QaTa-COV19 the per-image and pooled Dice of the same predictions differ by about 7 points; "
    "shown only as a reminder that the definition moves the number, not for comparison.",
]

NOT_STATED = ["Dice, definition not stated", "IoU, definition not stated", "pixel accuracy, definition not stated"]


def add_published(
    d: Document, infection_rows: list[list[Any]], lung_rows: list[list[Any]], detection_rows: list[list[Any]],
    synthetic: list[str],
) -> None:  # fmt: skip
    """The comparison section: covidseg's rows on real X-rays, then the published numbers."""
    d.heading("Comparison with published results", 2)
    if synthetic:
        d.para(
            "Left out of this comparison, because they were measured on SYNTHETIC data (a test fixture, not "
            "X-rays): " + ", ".join(f"`{x}`" for x in synthetic) + "."
        )
    if not (infection_rows or lung_rows or detection_rows):
        d.para("No result in this report was measured on real X-rays, so there is nothing to compare.")
        return
    d.para(
        "Each column holds one metric definition; a source appears only under the definitions it states. "
        "Published numbers come from other splits (the paper reports its Test split), so they place covidseg, "
        "they do not rank it."
    )
    d.items(PUBLISHED_NOTES)
    inf = infection_rows + [
        [PAPER, "COVID-QU-Ex Test (infection)"] + [""] * len(INFECTION_COLUMNS) + ["88.21%", "83.05%", ""],
        [LABWORK, "COVID-QU-Ex Val"] + [""] * len(INFECTION_COLUMNS) + ["0.70-0.85", "0.60-0.75", "0.95-0.97"],
        [QATA, "QaTa-COV19 (not comparable)"]
        + [""] * len(INFECTION_COLUMNS)
        + ["per image vs pooled: ~7 points apart", "", ""],
    ]
    d.table(["source", "data"] + [c for c, _ in INFECTION_COLUMNS] + NOT_STATED, inf, caption="Infection")
    lung = lung_rows + [[PAPER, "COVID-QU-Ex Test (lung)", "", "", "", "", "97.99%", "96.11%"]]
    d.table(
        ["source", "data", "Dice, per image", "IoU, per image", "Dice, pooled", "IoU, pooled"] + NOT_STATED[:2],
        lung,
        caption="Lungs",
    )
    det = detection_rows + [[PAPER, "COVID-QU-Ex Test", "", "", "", "> 99%", "> 99%"]]
    d.table(
        ["source", "data", "sensitivity (image-level call)", "specificity (image-level call)", "ROC AUC",
         "sensitivity, definition not stated", "specificity, definition not stated"],
        det,
        caption="COVID-19 detection",
    )  # fmt: skip

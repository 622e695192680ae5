"""Reading medbundle's DICOM SRs back with highdicom, for the tests that compare them with the CSV/JSON outputs."""

from __future__ import annotations

from pydicom.sr.codedict import codes

__all__ = ["class_findings", "score"]


def score(group) -> float:
    (m,) = group.get_measurements(name=codes.DCM.CertaintyOfFinding)
    assert m.unit.value == "1"
    return float(m.value)


def class_findings(sr) -> dict[str, tuple[float, str | None]]:
    """``{finding meaning (lower case): (probability, "Present"/"Absent"/None)}`` read back with highdicom."""
    out = {}
    for g in sr.content.get_image_measurement_groups():
        calls = g.get_qualitative_evaluations()
        out[g.finding_type.meaning.lower()] = (score(g), calls[0].value.meaning if calls else None)
    return out

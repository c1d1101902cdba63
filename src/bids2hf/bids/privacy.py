"""Privacy lint: metadata that looks identifying, found in JSON sidecars and NIfTI headers.

The key list follows the attributes that the DICOM Basic Application Level Confidentiality
Profile (PS3.15 Annex E, Table E.1-1) removes or replaces, spelled as dcm2niix and other
converters write them into BIDS sidecars. Values are never printed in full.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bids2hf.model.inventory import Problem, Severity

__all__ = ["IDENTIFYING_KEYS", "lint_nifti_text", "lint_sidecar", "mask"]

#: Sidecar keys whose presence with a non-empty value is reported.
IDENTIFYING_KEYS: frozenset[str] = frozenset(
    {
        # Patient identity
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "OtherPatientIDs",
        "OtherPatientNames",
        "OtherPatientIDsSequence",
        "MedicalRecordLocator",
        "MilitaryRank",
        "BranchOfService",
        "CountryOfResidence",
        "RegionOfResidence",
        "EthnicGroup",
        "Occupation",
        "PatientInsurancePlanCodeSequence",
        "PatientReligiousPreference",
        "AdditionalPatientHistory",
        "PatientComments",
        "ResponsiblePerson",
        # Dates and times that pin a visit
        "StudyDate",
        "StudyTime",
        "SeriesDate",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "ContentDate",
        "InstanceCreationDate",
        # Staff and institution
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansOfRecord",
        "OperatorsName",
        "RequestingPhysician",
        # Devices and identifiers that link back to records
        "StationName",
        "DeviceSerialNumber",
        "AccessionNumber",
        "StudyID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "RequestAttributesSequence",
    }
)


def mask(value: Any) -> str:
    """A hint of a value that does not reveal it: first character, then its length."""
    text = str(value)
    if len(text) <= 2:
        return "*" * len(text)
    return f"{text[0]}…({len(text)} chars)"


def _walk(data: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key path, value) of every key, in nested objects and in lists of them."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, value
            yield from _walk(value, path)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _walk(item, f"{prefix}[{i}]")


def lint_sidecar(relpath: str, data: Mapping[str, Any]) -> list[Problem]:
    """Warnings for identifying keys (at any depth) in one parsed JSON sidecar."""
    problems = []
    for key_path, value in _walk(data):
        key = key_path.rsplit(".", 1)[-1]
        if key in IDENTIFYING_KEYS and value not in (None, "", [], {}):
            problems.append(
                Problem(
                    Severity.WARNING,
                    "privacy",
                    relpath,
                    f"sidecar field {key_path} may identify a person or visit "
                    f"(value {mask(value)})",
                    "remove it before publishing, or pass --strict-privacy to refuse",
                )
            )
    return problems


def lint_nifti_text(relpath: str, fields: Mapping[str, str]) -> list[Problem]:
    """Warnings for non-empty free-text NIfTI header fields (descrip, aux_file, ...).

    Converters usually write scanner parameters there; anything else deserves a look, so every
    non-empty field that is not a known converter signature is reported.
    """
    problems = []
    for name, text in fields.items():
        if name == "descrip" and _is_converter_signature(text):
            continue
        problems.append(
            Problem(
                Severity.WARNING,
                "privacy",
                relpath,
                f"NIfTI header field {name} holds free text (value {mask(text)})",
                "check that it names no person, date or site",
            )
        )
    return problems


_CONVERTER_PREFIXES = ("TE=", "FSL", "dcm2nii", "MRIcron", "FreeSurfer", "AFNI", "SPM", "ANTs")


def _is_converter_signature(text: str) -> bool:
    return text.startswith(_CONVERTER_PREFIXES) or text.lower() in ("", "none")

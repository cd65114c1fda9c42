"""Generated DICOM for the radiotherapy tests: a small CT series (one file per slice, pydicom) and its RTSTRUCT."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(folder: Path, volume: np.ndarray, spacing_xyz=(0.9, 0.8, 2.5), origin=(-20.0, -15.0, 40.0),
                    z_positions: Sequence[float] | None = None, frame_uid: str | None = None,
                    study_uid: str | None = None, patient_id: str = "P1") -> dict:
    """Write ``volume`` (z, y, x, int16 HU) as axial CT slices ``slice_XXX.dcm`` in ``folder``, in shuffled file
    order; ``z_positions`` overrides the even slice positions (uneven spacing). Returns the UIDs written."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume.shape
    frame_uid, study_uid, series_uid = frame_uid or generate_uid(), study_uid or generate_uid(), generate_uid()
    if z_positions is None:
        z_positions = [origin[2] + k * spacing_xyz[2] for k in range(nz)]
    sop_uids = []
    for k in np.random.default_rng(0).permutation(nz):  # file order unrelated to slice order, as in real exports
        k = int(k)
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT_IMAGE_STORAGE, sop, "CT"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", patient_id, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20260101", "120000", "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, k + 1, "test"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], float(z_positions[k])]
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing_xyz[2]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(volume[k], dtype="<i2").tobytes()
        ds.save_as(folder / f"slice_{len(sop_uids):03d}.dcm", enforce_file_format=True)
        sop_uids.append(sop)
    return {"frame": frame_uid, "study": study_uid, "series": series_uid, "sops": set(sop_uids)}


def phantom(shape=(20, 40, 40), seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CT-like volume (HU) and two structures: a large ellipsoid "body" and a ball "core" partly inside it."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    c = np.asarray(shape, np.float32) / 2 + rng.uniform(-1.5, 1.5, 3)
    body = ((zz - c[0]) / (shape[0] * 0.35)) ** 2 + ((yy - c[1]) / (shape[1] * 0.35)) ** 2 + \
        ((xx - c[2]) / (shape[2] * 0.3)) ** 2 <= 1
    core = (zz - c[0] - 1) ** 2 / 16 + (yy - c[1] - 3) ** 2 / 64 + (xx - c[2] + 2) ** 2 / 64 <= 1
    volume = np.where(body, 40, -1000).astype(np.int16) + np.where(core, 300, 0).astype(np.int16)
    volume = (volume + rng.normal(0, 10, shape)).astype(np.int16)
    return volume, {"body": body, "core": core}


def write_rtstruct_for(series_folder: Path, rois: dict[str, np.ndarray], path: Path, frame_uid: str | None = None):
    """An RTSTRUCT on the series in ``series_folder`` with one ROI per named mask (ROI names as given, masks may
    overlap);
    ``frame_uid`` replaces its Frame of Reference (a structure set drawn on another scan)."""
    from smitunet.dicom_io import build_rtstruct_from_masks, label_colour, load_series_headers, write_dataset
    from smitunet.imageio import Geometry, read_sitk

    series = load_series_headers(series_folder, Geometry.of(read_sitk(series_folder)))
    ds = build_rtstruct_from_masks(series, {name: (mask, label_colour(i))
                                            for i, (name, mask) in enumerate(rois.items(), start=1)})
    if frame_uid is not None:
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = frame_uid
        for roi in ds.StructureSetROISequence:
            roi.ReferencedFrameOfReferenceUID = frame_uid
    write_dataset(ds, path)
    return ds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / max(1.0, float(a.sum() + b.sum()))

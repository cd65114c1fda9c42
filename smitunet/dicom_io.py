"""DICOM radiotherapy objects: the headers of an image series, RTSTRUCT and DICOM SEG, to and from label masks.

Needs the optional ``dicom`` extra (pydicom, highdicom); they are imported only when a function here runs, so the
core package works without them and a missing extra is one line saying what to install.

Conventions: masks are numpy (z, y, x) like ``smitunet.imageio``; a series' ``Geometry`` (SimpleITK's (x, y, z)
order) maps voxel indices to DICOM patient coordinates (LPS, which is SimpleITK's physical space). Contours are
made with marching squares (``skimage.measure.find_contours`` at level 0.5 on the zero-padded slice): every contour
vertex lies half-way between an inside and an outside pixel centre, so rasterising the polygons back with
``skimage.draw.polygon`` (pixel centres inside) restores the slice; several contours on a slice combine by
even-odd (XOR), the usual reading of holes in RTSTRUCT.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from smitunet.errors import SmitunetError
from smitunet.imageio import Geometry
from smitunet.utils.files import atomic_path

INSTALL_HINT = 'pip install -e ".[dicom]"'
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as RTReferencedStudy wants
# Stable ROI colours by label value (value 1 -> first entry, wrapping round): the same label always looks the same.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))
DICOM_OUTPUTS = ("rtstruct", "seg")
# Patient / study attributes an RTSTRUCT copies from its image series (type 2: present, possibly empty).
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                  "StudyTime", "StudyID", "ReferringPhysicianName", "AccessionNumber", "StudyDescription")


def require_dicom():
    """(pydicom, highdicom), or one line saying how to install them."""
    try:
        import highdicom
        import pydicom
    except ImportError as exc:
        raise SmitunetError(f"DICOM support needs the optional 'dicom' extra ({exc.name} is missing): "
                            f"{INSTALL_HINT}") from None
    return pydicom, highdicom


def label_colour(value: int) -> tuple[int, int, int]:
    return PALETTE[(int(value) - 1) % len(PALETTE)]


@dataclass
class Series:
    """The headers of one image series, ordered as the slices (z) of its array, with the array's geometry."""

    headers: list            # pydicom Datasets without pixel data, headers[k] = slice k
    geometry: Geometry

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.headers[0].FrameOfReferenceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]


def _index_matrix(geometry: Geometry) -> np.ndarray:
    """3x3 matrix taking (x, y, z) voxel indices to patient offsets from the origin."""
    return np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3) * np.asarray(geometry.spacing)[None, :]


def index_to_patient(geometry: Geometry, xyz: np.ndarray) -> np.ndarray:
    return np.asarray(geometry.origin)[None, :] + np.asarray(xyz, dtype=np.float64) @ _index_matrix(geometry).T


def patient_to_index(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(_index_matrix(geometry))
    return (np.asarray(points, dtype=np.float64) - np.asarray(geometry.origin)[None, :]) @ inverse.T


def read_headers(files: Sequence[Path]) -> list:
    """pydicom headers (no pixel data) of ``files``; a file that is not DICOM is one line naming it."""
    pydicom, _ = require_dicom()
    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as exc:  # pydicom raises several types for unreadable files
            raise SmitunetError(f"{f}: not a readable DICOM file ({type(exc).__name__}: {str(exc)[:120]})") from None
    return headers


def series_for_geometry(headers: Sequence, geometry: Geometry, where: str) -> Series:
    """Order the headers of one image series as the slices of an array with ``geometry``.

    Each header's Image Position (Patient) must fall on a slice of the geometry, one header per slice: the array
    SimpleITK read and the headers written into the references then describe the same planes.
    """
    if not headers:
        raise SmitunetError(f"{where}: no image slices")
    slices: list = [None] * geometry.size[2]
    for h in headers:
        position = getattr(h, "ImagePositionPatient", None)
        if position is None:
            raise SmitunetError(f"{where}: {h.SOPInstanceUID} has no Image Position (Patient)")
        idx = patient_to_index(geometry, np.asarray([[float(v) for v in position]]))[0]
        k = int(round(idx[2]))
        if np.abs(idx - [0, 0, k]).max() > 1e-2 or not 0 <= k < len(slices) or slices[k] is not None:
            raise SmitunetError(f"{where}: slice {h.SOPInstanceUID} does not match the series geometry "
                                "(one slice per plane expected)")
        slices[k] = h
    if any(s is None for s in slices):
        raise SmitunetError(f"{where}: {sum(s is None for s in slices)} slice(s) of the series have no DICOM file")
    return Series(slices, geometry)


def load_series_headers(folder: str | Path, geometry: Geometry) -> Series:
    """The headers of the DICOM series in ``folder`` (as ``smitunet.imageio.read_sitk`` reads it) in z order."""
    import SimpleITK as sitk

    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(ids) != 1:
        raise SmitunetError(f"{folder}: expected one DICOM series, found {len(ids)}")
    files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])]
    return series_for_geometry(read_headers(files), geometry, str(folder))


# ---------------------------------------------------------------------------------------------------- RTSTRUCT


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (N, 2) in (x, y) index coordinates around the foreground of one slice."""
    from skimage.measure import find_contours

    padded = np.pad(mask2d.astype(np.float32), 1)  # closes contours that touch the slice border
    contours = []
    for c in find_contours(padded, 0.5):
        c = c[:-1] if len(c) > 1 and np.array_equal(c[0], c[-1]) else c  # DICOM closes the polygon implicitly
        if len(c) >= 3:
            contours.append(c[:, ::-1] - 1.0)
    return contours


def _uid():
    pydicom, _ = require_dicom()
    return pydicom.uid.generate_uid()


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _ds(value: float) -> str:
    return f"{value:.8g}"  # DS holds 16 characters at most


def build_rtstruct(series: Series, labels: np.ndarray, label_names: Mapping[str, int],
                   structure_set_label: str = "smitunet"):
    """An RT Structure Set with one ROI per (non-background) label of ``label_names``, contours per slice."""
    if tuple(labels.shape) != series.geometry.shape_zyx:
        raise SmitunetError(f"label map of shape {labels.shape} does not match the series {series.geometry.shape_zyx}")
    named = sorted(((n, int(v)) for n, v in label_names.items() if int(v) != 0), key=lambda nv: nv[1])
    return build_rtstruct_from_masks(series, {name: (labels == value, label_colour(value)) for name, value in named},
                                     structure_set_label)


def build_rtstruct_from_masks(series: Series, rois: Mapping[str, tuple[np.ndarray, Sequence[int]]],
                              structure_set_label: str = "smitunet"):
    """An RT Structure Set with one ROI per entry {ROI name: (bool mask (z, y, x), RGB colour)}; masks may overlap."""
    pydicom, _ = require_dicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq

    first = series.headers[0]
    sop_uid, date_time = _uid(), _now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for keyword in _PATIENT_STUDY:
        setattr(ds, keyword, getattr(first, keyword, "") or "")
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, sop_uid
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", _uid(), 99, 1
    ds.Manufacturer, ds.SeriesDescription = "smitunet", "smitunet structures"
    ds.StructureSetLabel = structure_set_label
    ds.StructureSetDate, ds.StructureSetTime = date_time
    ds.ContentDate, ds.ContentTime = date_time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date_time

    def image_ref(h):
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
        return ref

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.series_instance_uid
    rt_series.ContourImageSequence = Seq([image_ref(h) for h in series.headers])
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    rt_study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    rt_study.RTReferencedSeriesSequence = Seq([rt_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = Seq([rt_study])
    ds.ReferencedFrameOfReferenceSequence = Seq([frame])

    structure_rois, contours_seq, observations = [], [], []
    for number, (name, (mask, colour)) in enumerate(rois.items(), start=1):
        if tuple(mask.shape) != series.geometry.shape_zyx:
            raise SmitunetError(f"ROI {name}: mask of shape {mask.shape} does not match the series "
                                f"{series.geometry.shape_zyx}")
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, series.frame_of_reference_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        structure_rois.append(roi)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [int(v) for v in colour]
        roi_contour.ReferencedROINumber = number
        items = []
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            for c in mask_contours(mask[k]):
                xyz = np.column_stack([c, np.full(len(c), float(k))])
                item = Dataset()
                item.ContourImageSequence = Seq([image_ref(series.headers[k])])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(c)
                item.ContourData = [_ds(v) for v in index_to_patient(series.geometry, xyz).ravel()]
                items.append(item)
        roi_contour.ContourSequence = Seq(items)
        contours_seq.append(roi_contour)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        observations.append(obs)
    ds.StructureSetROISequence = Seq(structure_rois)
    ds.ROIContourSequence = Seq(contours_seq)
    ds.RTROIObservationsSequence = Seq(observations)
    return ds


def roi_names(rtstruct) -> dict[int, str]:
    """ROI number -> ROI name."""
    return {int(r.ROINumber): str(r.ROIName) for r in getattr(rtstruct, "StructureSetROISequence", [])}


def rtstruct_frames_of_reference(rtstruct) -> set[str]:
    """Every Frame of Reference UID the structure set refers to (its referenced frames and its ROIs')."""
    uids = {str(f.FrameOfReferenceUID) for f in getattr(rtstruct, "ReferencedFrameOfReferenceSequence", [])
            if "FrameOfReferenceUID" in f}
    uids |= {str(r.ReferencedFrameOfReferenceUID) for r in getattr(rtstruct, "StructureSetROISequence", [])
             if "ReferencedFrameOfReferenceUID" in r}
    return uids


def roi_mask(rtstruct, roi_number: int, geometry: Geometry, where: str = "RTSTRUCT") -> np.ndarray:
    """Rasterise one ROI's closed planar contours onto the slices of ``geometry`` (bool (z, y, x))."""
    from skimage.draw import polygon

    shape = geometry.shape_zyx
    mask = np.zeros(shape, dtype=bool)
    for roi_contour in getattr(rtstruct, "ROIContourSequence", []):
        if int(roi_contour.ReferencedROINumber) != roi_number:
            continue
        for item in getattr(roi_contour, "ContourSequence", []):
            if str(getattr(item, "ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
                continue  # points and open lines enclose no volume
            points = np.asarray([float(v) for v in item.ContourData]).reshape(-1, 3)
            idx = patient_to_index(geometry, points)
            k = int(round(float(np.median(idx[:, 2]))))
            if np.abs(idx[:, 2] - k).max() > 0.25:
                raise SmitunetError(f"{where}: ROI {roi_number} has a contour that does not lie on a slice of the "
                                    "image series (contours must follow the series' planes)")
            if not 0 <= k < shape[0]:
                continue  # beyond the imaged slices
            rr, cc = polygon(idx[:, 1], idx[:, 0], shape=shape[1:])
            mask[k, rr, cc] ^= True
    return mask


def rtstruct_to_masks(rtstruct, geometry: Geometry, where: str = "RTSTRUCT") -> dict[str, np.ndarray]:
    """ROI name -> bool mask (z, y, x) for every ROI of the structure set."""
    return {name: roi_mask(rtstruct, number, geometry, where) for number, name in roi_names(rtstruct).items()}


# ---------------------------------------------------------------------------------------------------------- SEG


def build_seg(series: Series, labels: np.ndarray, label_names: Mapping[str, int]):
    """A binary DICOM SEG (highdicom) with one segment per (non-background) label, in label-value order."""
    _, hd = require_dicom()
    from pydicom.sr.codedict import codes

    import smitunet

    if tuple(labels.shape) != series.geometry.shape_zyx:
        raise SmitunetError(f"label map of shape {labels.shape} does not match the series {series.geometry.shape_zyx}")
    named = sorted(((n, int(v)) for n, v in label_names.items() if int(v) != 0), key=lambda nv: nv[1])
    algorithm = hd.AlgorithmIdentificationSequence(name="smitunet", version=smitunet.__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*label_colour(value)))
        for i, (name, value) in enumerate(named, start=1)]
    stacked = np.stack([labels == value for _, value in named], axis=-1).astype(np.uint8)
    try:
        return hd.seg.Segmentation(
            source_images=_with_patient_study(series.headers), pixel_array=stacked, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=98,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="smitunet",
            manufacturer_model_name="smitunet", software_versions=smitunet.__version__, device_serial_number="0",
            series_description="smitunet segmentation",
            omit_empty_frames=bool(stacked.any()))  # an all-empty SEG still needs frames
    except (ValueError, TypeError, AttributeError) as exc:
        raise SmitunetError(f"DICOM SEG cannot be built from series {series.series_instance_uid}: "
                            f"{str(exc).splitlines()[0][:200]}") from None


def _with_patient_study(headers: Sequence) -> list:
    """Copies of the headers with absent type-2 patient/study attributes present and empty: highdicom copies them
    into the SEG and fails on exported series that leave them out (e.g. no Patient's Birth Date)."""
    import copy

    filled = []
    for h in headers:
        missing = [k for k in _PATIENT_STUDY if k not in h]
        if missing:
            h = copy.deepcopy(h)
            for keyword in missing:
                setattr(h, keyword, "")
        filled.append(h)
    return filled


def seg_to_masks(seg_path: str | Path, series: Series) -> dict[str, np.ndarray]:
    """Segment label -> bool mask (z, y, x) on the slices of ``series`` (frames it omits are empty)."""
    _, hd = require_dicom()
    seg = hd.seg.segread(str(seg_path))
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(series.sop_instance_uids, segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)
    return {str(s.SegmentLabel): pixels[..., i].astype(bool) for i, s in enumerate(seg.SegmentSequence)}


# ------------------------------------------------------------------------------------------------------ writing


def write_dataset(ds, path: str | Path) -> None:
    """Save a pydicom Dataset atomically (temp name beside ``path``, then rename)."""
    with atomic_path(path, suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_dicom_outputs(kinds: Sequence[str], series: Series, labels: np.ndarray, label_names: Mapping[str, int],
                        output_base: Path) -> list[Path]:
    """``{output_base}_rtstruct.dcm`` / ``{output_base}_seg.dcm`` for the asked ``kinds``; returns the paths."""
    written = []
    for kind in kinds:
        if kind not in DICOM_OUTPUTS:
            raise SmitunetError(f"unknown DICOM output {kind!r}; choose from {', '.join(DICOM_OUTPUTS)}")
        ds = (build_rtstruct if kind == "rtstruct" else build_seg)(series, labels, label_names)
        path = dicom_output_file(output_base, kind)
        write_dataset(ds, path)
        written.append(path)
    return written


def dicom_output_file(output_base: Path, kind: str) -> Path:
    return output_base.with_name(f"{output_base.name}_{kind}.dcm")

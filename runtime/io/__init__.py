"""Reading and writing images and masks: raster files, DICOM, NIfTI, and DICOM-SEG; volumes (NIfTI, DICOM series,
multi-frame DICOM) and label volumes aligned with them.

DICOM and NIfTI need the `medical` extra (pydicom, nibabel) and DICOM-SEG the `dicomseg` extra (highdicom); they
are imported only when such a file is read or written.
"""

from .dataset import MaskItem, cap_per_source, default_data_root, read_dataset, read_datasets, select_sources
from .dicom import DECODER_ADVICE, DicomImage, decoder_advice, dicom_nifti_affine, read_dicom
from .images import INTENSITY_POLICIES, PERCENTILES, WINDOW_PRESETS, read_image, read_mask
from .nifti import NiftiSlice, read_nifti_slice
from .series import read_dicom_multiframe, read_dicom_series
from .volume_writers import write_volume_dicom_seg, write_volume_nifti
from .volumes import Volume, read_nifti_volume
from .loading import read_volume
from .writers import write_dicom_seg, write_label_png, write_mask_png, write_nifti_labels, write_overlay_png

__all__ = [
    "DECODER_ADVICE",
    "DicomImage",
    "INTENSITY_POLICIES",
    "MaskItem",
    "NiftiSlice",
    "Volume",
    "PERCENTILES",
    "WINDOW_PRESETS",
    "decoder_advice",
    "cap_per_source",
    "default_data_root",
    "dicom_nifti_affine",
    "read_dataset",
    "read_datasets",
    "read_dicom",
    "read_dicom_multiframe",
    "read_dicom_series",
    "read_image",
    "read_mask",
    "read_nifti_slice",
    "read_nifti_volume",
    "read_volume",
    "select_sources",
    "write_dicom_seg",
    "write_label_png",
    "write_mask_png",
    "write_nifti_labels",
    "write_overlay_png",
    "write_volume_dicom_seg",
    "write_volume_nifti",
]

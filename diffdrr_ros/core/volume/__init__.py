"""CT volumes: the container, loaders (DICOM / NIfTI / npy), built-in phantoms, and :func:`open_ct`."""

from .io import VolumeLoadError, load_dicom_series, load_nifti, load_npy, load_volume
from .material_volume import MaterialVolume
from .open_ct import PHANTOM_PREFIX, ct_source, open_ct
from .phantoms import PHANTOMS, box_phantom, head_phantom, make_phantom, sphere_phantom
from .volume import KINDS, MU_WATER_PER_MM, RAS_TO_LPS, Volume, as3, hu_to_mu

__all__ = [
    "KINDS",
    "MU_WATER_PER_MM",
    "PHANTOMS",
    "PHANTOM_PREFIX",
    "RAS_TO_LPS",
    "MaterialVolume",
    "Volume",
    "VolumeLoadError",
    "as3",
    "box_phantom",
    "ct_source",
    "head_phantom",
    "hu_to_mu",
    "load_dicom_series",
    "load_nifti",
    "load_npy",
    "load_volume",
    "make_phantom",
    "open_ct",
    "sphere_phantom",
]

"""One way to open a CT: phantom specs and files mean the same for the node, the CLI and the studies."""

import numpy as np
import pytest
import torch

from diffdrr_ros.core.volume import VolumeLoadError, ct_source, make_phantom, open_ct


def test_phantom_spec_and_file_and_downsample(tmp_path):
    vol = open_ct("phantom:head_tiny")
    assert torch.equal(vol.data, make_phantom("head_tiny").data)
    assert open_ct("phantom:head_tiny", downsample=2).shape == tuple(round(n / 2) for n in vol.shape)
    path = tmp_path / "ct.npy"
    np.save(path, np.zeros((4, 5, 6), dtype=np.float32))
    loaded = open_ct(str(path), spacing_mm=[1.0, 2.0, 3.0])
    assert loaded.shape == (4, 5, 6) and loaded.spacing.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="unknown phantom"):
        open_ct("phantom:nope")
    with pytest.raises(VolumeLoadError):
        open_ct(str(tmp_path / "missing.nii.gz"))


def test_ct_source_of_command_line_flags():
    assert ct_source(None) == "phantom:head"
    assert ct_source(None, "head_small") == "phantom:head_small"
    assert ct_source("/data/ct") == "/data/ct"

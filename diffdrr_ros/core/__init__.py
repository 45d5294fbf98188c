"""The pure core (no ROS import), one folder per concept; each ``__init__`` re-exports its public names.

* :mod:`.geometry` - rotations, the C-arm pose on the seed's sphere, the detector, kinematics;
* :mod:`.volume` - the CT container, loaders, phantoms, :func:`~.volume.open_ct`;
* :mod:`.xray_files` - X-ray frame files: DICOM projection geometry, frames in the right domain;
* :mod:`.physics` - materials from HU, NIST mass attenuation, the tube spectrum, the polychromatic detector model;
* :mod:`.drr` - the differentiable DRR (:func:`~.drr.render`) and its backends;
* :mod:`.registration` - :class:`~.registration.Registrar` and what it is made of;
* :mod:`.metrics` - similarity and pose error; :mod:`.sim` - simulated frames and trajectories;
* :mod:`.overlay` - DRR-on-frame pictures.
"""

"""The wide initial search: centring candidates on the fixed image's centroid."""

from diffdrr_ros.core.drr import render
from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, centroid_mm
from diffdrr_ros.core.registration.search import center_translations
from diffdrr_ros.core.volume import make_phantom

DET32 = Detector(32, 32, spacing_mm=(12.0, 12.0), sdd_mm=1020.0, sid_mm=750.0)


def test_centring_moves_the_drr_centroid_onto_the_fixed_one():
    vol = make_phantom("head_small")
    searching = Registrar(vol, DET32, RegistrationConfig(init_search=False), device="cpu")
    truth = searching.pose_from_carm([0.1, 0.25, -0.05], [4.0, -6.0, 3.0])
    fixed = searching.render(truth[None])[0]
    lvl = searching.levels[-1]
    off = searching.pose_from_carm([0.1, 0.25, -0.05], [60.0, -6.0, -50.0])  # far off in x and z
    target = centroid_mm(fixed[None], lvl.detector, None)[0]
    before = centroid_mm(searching.render(off[None]), lvl.detector, None)[0]
    centred = center_translations(lambda c: render(lvl.volume, c, lvl.detector, searching.settings(lvl.factor)),
                                  lvl.detector, fixed, None, off[None], searching.center)
    after = centroid_mm(searching.render(centred), lvl.detector, None)[0]
    assert float((before - target).norm()) > 30.0
    assert float((after - target).norm()) < 3.0  # mm on the detector, a quarter of a pixel
    assert float(searching.mtre(centred[0], truth)) < float(searching.mtre(off, truth))

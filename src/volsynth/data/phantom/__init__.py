"""Procedural phantoms: abdomen CT/MR and chest CT volumes with label maps and radiology reports.

Kinds (``PHANTOM_KINDS``): ``abdomen-ct``, ``abdomen-mr`` (the same anatomy as abdomen-ct for the same
seed, size and spacing, rendered T1- or T2-like) and ``chest-ct``.

Label ids (``LABELS[kind]``):

- abdomen-ct / abdomen-mr: 0 background, 1 liver, 2 portal_vein, 3 hepatic_vein, 4 tumour, 5 spleen,
  6 kidney, 7 aorta, 8 ivc, 9 stomach_bowel, 10 spine
- chest-ct: 0 background, 1 right_upper_lobe, 2 right_middle_lobe, 3 right_lower_lobe,
  4 left_upper_lobe, 5 left_lower_lobe, 6 airway, 7 pulmonary_vessels, 8 nodule, 9 pleural_effusion

Arrays are (X, Y, Z) with a diagonal RAS+ affine centred on the world origin; the default spacing is
360 mm / size (isotropic). ``facts`` holds what the report says, measured from the label map:
lesion diameters are the maximum 3D extent of each connected component (see ``measure``).

Options of ``generate_case``: ``phase`` (CT: non-contrast, arterial, portal-venous; chest:
non-contrast, contrast-enhanced), ``sequence`` (MR: T1, T2), ``lesions`` (a number of tumours or
nodules to attempt; fewer are placed when they do not fit), ``emphysema`` (bool) and ``effusion``
(none, right, left, bilateral) for the chest. Unset options are drawn at random.
"""

from volsynth.data.phantom.generate import LABELS, PHANTOM_KINDS, PhantomCase, generate_case
from volsynth.data.phantom.writer import case_seed, write_phantom_dataset

__all__ = ["LABELS", "PHANTOM_KINDS", "PhantomCase", "case_seed", "generate_case", "write_phantom_dataset"]

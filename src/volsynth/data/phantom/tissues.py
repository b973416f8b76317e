"""Tissue classes of the phantoms and their appearance: CT attenuation per contrast phase, MR signal.

Anatomy is painted as tissue classes (finer than the output labels: fat, muscle, bone marrow,
bowel gas, ...); the renderer turns tissues into intensities and a lookup turns them into labels.
Tumour rows hold differences to liver (CT, HU) or ratios to liver (MR), so a lesion keeps its
appearance (hypo-, hyperdense ...) whatever random offsets a case gives the liver.
"""

from __future__ import annotations

import numpy as np

TISSUES = (
    "air", "skin", "fat", "muscle", "bone_cortex", "bone_marrow", "disc", "csf", "soft_tissue", "visceral_fat",
    "liver", "portal_vein", "hepatic_vein", "tumour_hypo", "tumour_hyper", "tumour_rim", "tumour_core",
    "tumour_viable", "spleen", "kidney_cortex", "kidney_medulla", "aorta", "ivc", "splanchnic_vein", "bowel_wall",
    "bowel_fluid", "gas", "bile", "lung", "myocardium", "blood", "airway_wall", "emphysema", "nodule_solid",
    "nodule_ggo", "effusion", "pulmonary_vessel", "rib",
)
T = {name: i for i, name in enumerate(TISSUES)}
TUMOUR_TISSUES = ("tumour_hypo", "tumour_hyper", "tumour_rim", "tumour_core", "tumour_viable")

PHASES = ("non-contrast", "arterial", "portal-venous")
CHEST_PHASES = ("non-contrast", "contrast-enhanced")
SEQUENCES = ("T1", "T2")

# HU for non-contrast, arterial, portal-venous; tumour rows are differences to liver.
_CT = {
    "air": (-1000, -1000, -1000), "skin": (20, 30, 40), "fat": (-100, -100, -100), "muscle": (50, 55, 65),
    "bone_cortex": (1000, 1000, 1000), "bone_marrow": (330, 340, 350), "disc": (80, 85, 90), "csf": (10, 10, 10),
    "soft_tissue": (40, 100, 90), "visceral_fat": (-95, -95, -95), "liver": (55, 75, 110),
    "portal_vein": (40, 110, 180), "hepatic_vein": (40, 50, 165), "tumour_hypo": (-25, -35, -60),
    "tumour_hyper": (15, 80, 30), "tumour_rim": (-10, 45, 25), "tumour_core": (-25, -40, -65),
    "tumour_viable": (-15, 15, -25), "spleen": (45, 110, 120), "kidney_cortex": (35, 180, 170),
    "kidney_medulla": (30, 70, 160), "aorta": (40, 300, 160), "ivc": (40, 70, 140),
    "splanchnic_vein": (40, 100, 170), "bowel_wall": (40, 90, 100), "bowel_fluid": (15, 15, 15),
    "gas": (-950, -950, -950), "bile": (8, 8, 8), "lung": (-860, -860, -860), "myocardium": (45, 110, 110),
    "blood": (40, 250, 150), "airway_wall": (30, 40, 50), "emphysema": (-975, -975, -975),
    "nodule_solid": (35, 70, 70), "nodule_ggo": (-560, -540, -540), "effusion": (12, 12, 12),
    "pulmonary_vessel": (40, 250, 170), "rib": (450, 450, 450),
}
# Standard deviation (HU) of the fine tissue texture.
_CT_TEXTURE = {"fat": 10, "visceral_fat": 12, "muscle": 12, "liver": 9, "spleen": 8, "bone_marrow": 70,
               "bone_cortex": 120, "rib": 60, "bowel_fluid": 15, "lung": 30, "emphysema": 10, "kidney_cortex": 10,
               "kidney_medulla": 10, "soft_tissue": 12, "effusion": 6, "nodule_solid": 12, "nodule_ggo": 60}
for _name in TUMOUR_TISSUES:
    _CT_TEXTURE[_name] = 14

# MR signal (arbitrary units) for T1 (in/opposed-phase GRE, pre-contrast) and T2 (single-shot FSE);
# tumour rows are ratios to liver; vessels are flow voids on both.
_MR = {
    "air": (0, 0), "skin": (300, 260), "fat": (900, 650), "muscle": (280, 150), "bone_cortex": (25, 20),
    "bone_marrow": (600, 400), "disc": (250, 520), "csf": (80, 950), "soft_tissue": (350, 300),
    "visceral_fat": (850, 600), "liver": (450, 200), "portal_vein": (90, 40), "hepatic_vein": (90, 40),
    "tumour_hypo": (0.5, 3.0), "tumour_hyper": (1.3, 1.8), "tumour_rim": (0.8, 2.0), "tumour_core": (0.25, 4.5),
    "tumour_viable": (0.65, 1.9), "spleen": (330, 420), "kidney_cortex": (380, 450), "kidney_medulla": (250, 560),
    "aorta": (70, 30), "ivc": (110, 50), "splanchnic_vein": (90, 40), "bowel_wall": (300, 300),
    "bowel_fluid": (100, 850), "gas": (5, 5), "bile": (120, 950), "lung": (15, 15), "myocardium": (300, 180),
    "blood": (100, 50), "airway_wall": (150, 120), "emphysema": (5, 5), "nodule_solid": (300, 350),
    "nodule_ggo": (60, 90), "effusion": (100, 900), "pulmonary_vessel": (80, 40),
    "rib": (300, 200),
}


def _column(table: dict, column: int) -> np.ndarray:
    return np.array([float(table[name][column]) for name in TISSUES], dtype=np.float32)


def ct_table(phase: str) -> np.ndarray:
    """HU per tissue for a contrast phase (tumour rows: difference to liver)."""
    column = {"non-contrast": 0, "arterial": 1, "portal-venous": 2, "contrast-enhanced": 2}[phase]
    return _column(_CT, column)


def ct_texture() -> np.ndarray:
    """Texture standard deviation (HU) per tissue; 4 HU where not listed."""
    return np.array([float(_CT_TEXTURE.get(name, 4)) for name in TISSUES], dtype=np.float32)


def mr_table(sequence: str) -> np.ndarray:
    """MR signal per tissue for ``T1`` or ``T2`` (tumour rows: ratio to liver)."""
    return _column(_MR, SEQUENCES.index(sequence))


def ct_density(pattern: str, phase: str) -> str:
    """How a lesion of an enhancement pattern looks in a CT phase (rim enhancement needs contrast)."""
    if pattern == "rim-enhancing" and phase == "non-contrast":
        return "hypodense"
    return pattern


def mr_signal(pattern: str, sequence: str) -> str:
    """``hyperintense`` or ``hypointense`` relative to liver for a lesion pattern and sequence."""
    body = {"hypodense": "tumour_hypo", "hyperdense": "tumour_hyper", "rim-enhancing": "tumour_hypo",
            "necrotic": "tumour_viable"}[pattern]
    return "hyperintense" if _MR[body][SEQUENCES.index(sequence)] > 1.0 else "hypointense"


def tissue_set(*names: str) -> np.ndarray:
    """Lookup table over tissue ids (256 entries): True for the named tissues."""
    table = np.zeros(256, dtype=bool)
    table[[T[n] for n in names]] = True
    return table

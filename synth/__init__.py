"""Deterministic generator of a realistic synthetic hospital brain-MRI DICOM export.

Used by the demo and the tests in place of real patient data: MNI152-based heads with a skull,
three vendors' header styles, scouts, diffusion maps, screenshots, broken files and PHI-shaped
headers, plus a labels registry and a truth file describing what a correct pipeline should find.
"""

from synth.export import ExportSummary, SynthConfig, generate_export

__all__ = ["ExportSummary", "SynthConfig", "generate_export"]

"""The converter's view of the architecture families: re-exported from `edgeslim.arch`,
where each family is described once for the converter, calibration and the runtime."""
from __future__ import annotations

from edgeslim.arch import ARCHS, Family, arch_for_config, supported

Arch = Family  # the converter's historical name for a family object

__all__ = ["ARCHS", "Arch", "arch_for_config", "supported"]

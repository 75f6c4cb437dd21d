"""Device profiles and the fit report: will this model, at this type and context, fit?

    total = weights (exact bytes of the planned tensors)
          + KV cache (fp16 K and V: 2 * n_layers * ctx * n_kv_heads * head_dim * 2 bytes)
          + runtime overhead (activations, scratch, interpreter: OVERHEAD_BYTES)

and it fits when total <= RAM * usable fraction. The usable fractions are
deliberately conservative: on Apple silicon Metal lets one process wire about
two thirds of unified memory (less on 8 GB machines, where macOS itself takes
a large share); on Linux boards and PCs the OS, desktop and page cache keep the
rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import FitError, InputError
from .tables import affine_name

GiB = 1 << 30
MiB = 1 << 20
OVERHEAD_BYTES = 250 * MiB
DEFAULT_CTX = 4096
KV_BYTES_PER_VALUE = 2  # fp16 K and V


@dataclass(frozen=True)
class Target:
    """A machine: total RAM, the fraction one model may use, and the backend edgeslim runs there."""

    name: str
    ram_bytes: int
    usable_fraction: float
    backend: str  # "mlx" | "numba"
    description: str

    @property
    def usable_bytes(self) -> int:
        return int(self.ram_bytes * self.usable_fraction)


def _t(name: str, gib: int, frac: float, backend: str, desc: str) -> tuple[str, Target]:
    return name, Target(name, gib * GiB, frac, backend, desc)


TARGETS: dict[str, Target] = dict([
    _t("m1-8gb", 8, 0.60, "mlx", "Apple M1, 8 GB unified memory"),
    _t("m1-16gb", 16, 0.67, "mlx", "Apple M1, 16 GB unified memory"),
    _t("m2-8gb", 8, 0.60, "mlx", "Apple M2, 8 GB unified memory"),
    _t("m2-16gb", 16, 0.67, "mlx", "Apple M2, 16 GB unified memory"),
    _t("m2-24gb", 24, 0.67, "mlx", "Apple M2, 24 GB unified memory"),
    _t("m3-8gb", 8, 0.60, "mlx", "Apple M3, 8 GB unified memory"),
    _t("m3-18gb", 18, 0.67, "mlx", "Apple M3 Pro, 18 GB unified memory"),
    _t("m4-16gb", 16, 0.67, "mlx", "Apple M4, 16 GB unified memory"),
    _t("rpi5-4gb", 4, 0.70, "numba", "Raspberry Pi 5, 4 GB, 64-bit Linux"),
    _t("rpi5-8gb", 8, 0.75, "numba", "Raspberry Pi 5, 8 GB, 64-bit Linux"),
    _t("x86-8gb", 8, 0.60, "numba", "x86-64 PC or laptop, 8 GB RAM"),
    _t("x86-16gb", 16, 0.70, "numba", "x86-64 PC or laptop, 16 GB RAM"),
    _t("x86-32gb", 32, 0.75, "numba", "x86-64 PC or workstation, 32 GB RAM"),
])

# Uniform types tried from best to smallest when --target picks one.
LADDERS: dict[str, tuple[str, ...]] = {
    "ggml": ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"),
    "affine": tuple(affine_name(b, 64) for b in (8, 6, 5, 4, 3, 2)),
}


def available_bytes() -> int | None:
    """Memory the OS says a new process can use now (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def this_machine() -> Target:
    """The machine running this code: its RAM, usable = what is available now (Linux) or 60% of
    RAM elsewhere (the 8 GB profiles' fraction), backend MLX on Apple silicon, else numba."""
    import os
    import platform

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        ram = 8 * GiB
    avail = available_bytes()
    frac = min(1.0, avail / ram) if avail and ram else 0.60
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    return Target("this-machine", ram, frac, "mlx" if apple else "numba",
                  f"this machine, {gib(ram)} RAM" + (f", {gib(avail)} available now" if avail else ""))


def get_target(name: str) -> Target:
    """A profile by name; InputError listing the known ones otherwise."""
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise InputError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def kv_cache_bytes(n_layers: int, ctx: int, n_kv_heads: int, head_dim: int) -> int:
    """fp16 K and V for every layer and position."""
    return 2 * n_layers * ctx * n_kv_heads * head_dim * KV_BYTES_PER_VALUE


def gib(n: int) -> str:
    """Human size: GiB with 2 decimals, or MiB below 1 GiB."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


@dataclass
class Fit:
    """Memory needed by one choice, against a target (or none)."""

    qtype: str
    ctx: int
    weights_bytes: int
    kv_bytes: int
    target: Target | None = None
    overhead_bytes: int = OVERHEAD_BYTES

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes

    @property
    def headroom_bytes(self) -> int | None:
        return None if self.target is None else self.target.usable_bytes - self.total_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.target is None else self.headroom_bytes >= 0

    def to_dict(self) -> dict:
        t = self.target
        return {
            "target": t.name if t else None, "backend": t.backend if t else None,
            "ram_bytes": t.ram_bytes if t else None, "usable_bytes": t.usable_bytes if t else None,
            "quant": self.qtype, "ctx": self.ctx, "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_bytes, "overhead_bytes": self.overhead_bytes,
            "total_bytes": self.total_bytes, "headroom_bytes": self.headroom_bytes, "fits": self.fits,
        }

    def text(self) -> str:
        """The multi-line report printed to stderr."""
        lines = []
        if self.target:
            t = self.target
            lines.append(f"target {t.name}: {t.description}; {gib(t.usable_bytes)} of {gib(t.ram_bytes)} usable, "
                         f"backend {t.backend}")
        else:
            lines.append("memory needed (no --target given):")
        lines += [f"  weights   {self.qtype:<12} {gib(self.weights_bytes):>12}",
                  f"  KV cache  ctx {self.ctx:<8} {gib(self.kv_bytes):>12}",
                  f"  overhead  {'':<12} {gib(self.overhead_bytes):>12}",
                  f"  total     {'':<12} {gib(self.total_bytes):>12}"]
        if self.target:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  {verdict}: headroom {gib(self.headroom_bytes)}")
        return "\n".join(lines)

    def short(self) -> str:
        t = self.target
        return (f"{self.qtype} needs {gib(self.total_bytes)} (weights {gib(self.weights_bytes)} + KV cache "
                f"{gib(self.kv_bytes)} at ctx {self.ctx} + overhead {gib(self.overhead_bytes)})"
                + (f" but {t.name} has {gib(t.usable_bytes)} usable" if t else ""))


def pick_type(family: str, weights_for: Callable[[str], int], kv_bytes: int, target: Target, ctx: int) -> Fit:
    """The best type of `family`'s ladder that fits `target`; FitError with the numbers if none does."""
    fit = None
    for qtype in LADDERS[family]:
        fit = Fit(qtype, ctx, weights_for(qtype), kv_bytes, target)
        if fit.fits:
            return fit
    raise FitError(f"the model does not fit {target.name} even at the smallest {family} type: {fit.short()}; "
                   "choose a bigger target, a smaller --ctx or a smaller model")


def require_fit(fit: Fit, family: str, weights_for: Callable[[str], int]) -> None:
    """FitError when an explicitly chosen type does not fit, naming one that does (if any)."""
    if fit.target is None or fit.fits:
        return
    smaller = next((q for q in LADDERS.get(family, ()) if
                    Fit(q, fit.ctx, weights_for(q), fit.kv_bytes, fit.target).fits), None)
    hint = f"use --quant {smaller}" if smaller else "choose a bigger target, a smaller --ctx or a smaller model"
    raise FitError(f"the model does not fit {fit.target.name}: {fit.short()}; {hint}")

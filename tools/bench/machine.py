"""The machine a benchmark ran on, printed next to its ratios: CPU model, vector extensions,
cores, library versions. A ratio measured on one CPU says little about another (XLA:CPU and
torch pick different kernels for AVX2 and AVX-512), so every figure carries this line.

    python tools/bench/machine.py   # the line alone
"""

import importlib.metadata
import os
import platform

# The vector extensions that decide which matrix kernels the libraries run, in this order.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8")
LIBRARIES = ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo (Linux; empty elsewhere)."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def cpu_model() -> str:
  """The model name, with x86's family and model numbers (VMs often report a bare "AMD EPYC")."""
  info = _cpuinfo()
  name = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
  if "cpu family" in info and "model" in info:
    name += f" (family {info['cpu family']}, model {info['model']})"
  return name


def vector_extensions() -> list[str]:
  """Those of `VECTOR_FLAGS` the CPU reports (x86 Linux); on ARM, its feature list as given."""
  info = _cpuinfo()
  if "flags" in info:
    flags = set(info["flags"].split())
    return [f for f in VECTOR_FLAGS if f in flags]
  return info.get("Features", "").split()


def cores() -> str:
  """Cores this process may use, and the machine's count when they differ."""
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  total = os.cpu_count()
  return f"{usable} cores" + ("" if usable == total else f" (of {total})")


def versions() -> str:
  found = []
  for name in LIBRARIES:
    try:
      found.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      found.append(f"{name} -")
  return ", ".join(found)


def load() -> str:
  """The 1-minute load average: on a shared machine, how many other runnable threads the
  figures competed with (torch's OpenMP threads slow down far more than XLA's when the cores
  are oversubscribed, so ratios taken under load are not those of an idle machine)."""
  if not hasattr(os, "getloadavg"):
    return "load average unknown"
  return f"load average {os.getloadavg()[0]:.1f}"


def describe() -> str:
  """One line: `machine: MODEL; vector: ...; N cores; load; jax x, ...`."""
  vector = " ".join(vector_extensions()) or "unknown"
  return (f"machine: {cpu_model()}; vector: {vector}; {cores()}; {load()}; python "
          f"{platform.python_version()}; {versions()}")


if __name__ == "__main__":
  print(describe())
